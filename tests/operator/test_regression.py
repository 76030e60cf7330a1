"""Regression cases: recorded from an incident (the ledger's implicated actions, else its evidence), exported for
Git, and given to the evaluation Job, so a bundle that still fails the case is held and the fix rolls out."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from tests.conftest import AD, AI, Cluster, example, wait_for
from tests.operator.evaljobs import cases_given, finish_job, run_eval, wait_job
from tests.operator.test_agentdeployment import wired_revision
from tests.operator.test_gate import EVALUATION, agent, gated_reason, start
from tourniquet.cli import main as cli

ARC = "tourniquet.dev/v1alpha1/agentregressioncases"


def tourniquet(kubeconfig: str, namespace: str, *args: str) -> Any:
    return CliRunner().invoke(cli, [*args, "--kubeconfig", kubeconfig, "-n", namespace])


def accepted(cluster: Cluster, name: str) -> dict[str, Any]:
    conditions = cluster.status(ARC, name).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Accepted"), {})


def record_refunds(path: Path) -> None:
    """What the refund agent's runtime recorded: a retried ticket refunded order 123 twice, and, two days
    earlier, an ordinary refund outside the incident window."""
    from tourniquet.runtime.ledger import Action, SqliteLedger, args_digest, canonical_json

    now = datetime.now(UTC)
    ledger = SqliteLedger(path)

    def refund(key: str, order: str, when: datetime) -> None:
        args = {"order_id": order, "amount_cents": 500}
        ledger.record(
            Action(
                key,
                "refund-agent",
                "issue_refund",
                args_digest("issue_refund", args),
                canonical_json(args),
                (f"order:{order}",),
                when,
            )
        )

    refund("ticket-812/attempt-1", "123", now - timedelta(seconds=2))
    refund("ticket-812/attempt-2", "123", now - timedelta(seconds=1))
    refund("ticket-700/attempt-1", "77", now - timedelta(days=2))
    ledger.close()


def fixed_bundle(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fix: issue_refund takes an idempotency key, so a retried ticket repeats the same action."""
    docs = copy.deepcopy(docs)
    refund = next(t for t in docs[1]["spec"]["bundle"]["tools"] if t["name"] == "issue_refund")
    refund["schema"]["properties"]["idempotency_key"] = {"type": "string"}
    refund["schema"]["required"].append("idempotency_key")
    return docs


def test_a_case_from_the_ledger_holds_a_bundle_that_still_fails_it_and_the_fix_rolls_out(
    cluster: Cluster, operator, oncall_kubeconfig: str, tmp_path: Path
) -> None:
    ns = cluster.namespace
    start(cluster)
    ledger = tmp_path / "ledger.db"
    record_refunds(ledger)
    cluster.apply(
        [
            {
                "apiVersion": "tourniquet.dev/v1alpha1",
                "kind": "AgentIncident",
                "metadata": {"name": "dup-refunds"},
                "spec": {
                    "agents": ["refund-agent"],
                    "severity": "SEV2",
                    "summary": "duplicate refunds",
                    "window": {"start": (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")},
                },
            }
        ]
    )
    wait_for(
        lambda: (cluster.status(AI, "dup-refunds").get("evidence") or {}).get("capturedAt"), timeout=30, what="evidence"
    )
    wait_for(lambda: cluster.status(AI, "dup-refunds").get("phase") == "Contained", timeout=30, what="contained")
    cluster.patch(AI, "dup-refunds", {"spec": {"resolved": True}})

    result = tourniquet(
        oncall_kubeconfig,
        ns,
        "regression",
        "dup-refunds",
        "--ledger",
        str(ledger),
        "--expect",
        "each order is refunded at most once, however often its ticket is retried",
        "--max-calls",
        "issue_refund:order_id=1",
    )
    assert result.exit_code == 0, result.output
    assert "Recorded AgentRegressionCase dup-refunds for refund-agent (2 implicated action(s) from the ledger" in (
        result.output
    )
    case = cluster.get(ARC, "dup-refunds")
    spec = case["spec"]
    assert (spec["agent"], spec["incident"], spec["revision"], spec["source"]) == (
        "refund-agent",
        "dup-refunds",
        1,
        "ledger",
    )
    assert [i["action"] for i in spec["inputs"]] == ["ticket-812/attempt-1", "ticket-812/attempt-2"]  # not ticket-700
    assert spec["inputs"][0]["arguments"] == {"order_id": "123", "amount_cents": 500}
    assert spec["inputs"][0]["subjects"] == ["order:123"]
    assert spec["expected"]["maxCalls"] == [{"tool": "issue_refund", "perArgument": "order_id", "count": 1}]
    assert wait_for(
        lambda: accepted(cluster, "dup-refunds").get("status") == "True", timeout=30, what="the case accepted"
    )

    # Exportable as YAML for Git: no status, no server-set metadata, and it applies as it is.
    exported = tourniquet(oncall_kubeconfig, ns, "cases", "refund-agent", "-o", "yaml")
    assert exported.exit_code == 0, exported.output
    (document,) = list(yaml.safe_load_all(exported.output))
    assert set(document) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(document["metadata"]) == {"name", "labels"} and document["spec"] == spec
    cluster.apply([document])

    # A bundle change that does not fix it: the eval command, given the case, fails it; held.
    cluster.apply(agent("You are the refund assistant. Refund carefully.", EVALUATION))
    job = wait_job(cluster, 2)
    assert [c["name"] for c in cases_given(cluster, job)] == ["dup-refunds"]
    code, message = run_eval(cluster, job, tmp_path / "eval-2")
    assert code == 1
    finish_job(cluster, job["metadata"]["name"], message=message, exit_code=code)
    failed = wait_for(lambda: gated_reason(cluster, "EvaluationFailed"), timeout=30, what="revision 2 held")
    assert "dup-refunds (issue_refund called 2 times for order_id=123 (at most 1))" in failed["message"]
    assert wired_revision(cluster) == "1", "consumers untouched"

    # The fix (an idempotency key on issue_refund) passes the same case and rolls out.
    docs = fixed_bundle(agent(evaluation=EVALUATION))
    cluster.apply(docs)
    job = wait_job(cluster, 3)
    code, message = run_eval(cluster, job, tmp_path / "eval-3")
    assert code == 0, message
    finish_job(cluster, job["metadata"]["name"], message=message, exit_code=code)
    wait_for(lambda: wired_revision(cluster) == "3", timeout=30, what="the fix rolled out")
    # The agent's status follows the wiring in the same pass: wait for it rather than read it at once.
    wait_for(
        lambda: (cluster.status(AD, "refund-agent").get("evaluation") or {}).get("state") == "Passed",
        timeout=30,
        what="the evaluation recorded as passed",
    )
    assert cluster.status(AD, "refund-agent")["evaluation"] == {
        "revision": 3,
        "job": job["metadata"]["name"],
        "cases": 1,
        "state": "Passed",
        "failed": [],
        "message": "",
    }


def test_a_case_for_a_missing_agent_says_so_and_the_cli_refuses_one(
    cluster: Cluster, operator, oncall_kubeconfig: str
) -> None:
    ns = cluster.namespace
    start(cluster)
    typo = {
        "apiVersion": "tourniquet.dev/v1alpha1",
        "kind": "AgentRegressionCase",
        "metadata": {"name": "typo"},
        "spec": {"agent": "refund-agnet", "expected": {"description": "refund once"}},
    }
    cluster.apply([typo])
    missing = wait_for(lambda: accepted(cluster, "typo").get("reason") == "AgentNotFound" and accepted(cluster, "typo"))
    assert "AgentDeployment refund-agnet not found" in missing["message"] and missing["status"] == "False"
    # Once an agent of that name exists, the case is accepted.
    other = copy.deepcopy(example()[1])
    other["metadata"]["name"] = "refund-agnet"
    other["spec"]["consumers"] = []
    cluster.apply([other])
    wait_for(
        lambda: accepted(cluster, "typo").get("status") == "True", timeout=30, what="accepted once the agent exists"
    )

    cluster.apply(
        [
            {
                "apiVersion": "tourniquet.dev/v1alpha1",
                "kind": "AgentIncident",
                "metadata": {"name": "slow"},
                "spec": {"agents": ["refund-agent"], "severity": "SEV3"},
            }
        ]
    )
    wrong = tourniquet(oncall_kubeconfig, ns, "regression", "slow", "--agent", "pricing-agent", "--expect", "x")
    assert wrong.exit_code == 1 and "slow is not on agent pricing-agent (its agents: refund-agent)" in wrong.output
    gone = tourniquet(oncall_kubeconfig, ns, "regression", "nope", "--expect", "x")
    assert gone.exit_code == 1 and "AgentIncident nope not found" in gone.output
    empty = tourniquet(oncall_kubeconfig, ns, "regression", "slow", "--expect", " ")
    assert empty.exit_code == 1 and "--expect is empty" in empty.output
    # Without a ledger the inputs come from the evidence (no pods here: none), said so.
    wait_for(lambda: cluster.status(AI, "slow").get("evidence"), timeout=30, what="evidence")
    done = tourniquet(oncall_kubeconfig, ns, "regression", "slow", "--expect", "answer within a minute")
    assert done.exit_code == 0, done.output
    assert "no ledger given (--ledger)" in done.output and cluster.get(ARC, "slow")["spec"]["source"] == "evidence"
    again = tourniquet(oncall_kubeconfig, ns, "regression", "slow", "--expect", "answer within a minute")
    assert again.exit_code == 1 and "AgentRegressionCase slow already exists" in again.output
