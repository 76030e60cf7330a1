"""Issue 17's "Done when", end to end with the demo refund agent: its runtime's ledger, its own eval command, the
real operator. A bad prompt ships, the agent refunds twice, an incident rolls it back (never held by the gate) and
resolves; the postmortem says what happened; the regression case recorded from it holds a bundle change that still
fails it (consumers untouched), and the fix rolls out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import AD, AI, Cluster, wait_for
from tests.operator.evaljobs import evaluation_jobs, finish_job, run_eval, wait_job
from tests.operator.test_agentdeployment import wired_revision
from tests.operator.test_gate import EVALUATION, agent, gated_reason, start
from tests.operator.test_postmortem import BAD_PROMPT, INCIDENT, postmortem, run_demo_agent, tourniquet, written_from
from tests.operator.test_regression import fixed_bundle

LEDGER_REF = {"secretRef": {"name": "refund-ledger", "key": "url"}}


def test_an_incident_becomes_a_postmortem_and_a_case_that_gates_the_next_deploy(
    cluster: Cluster, operator, oncall_kubeconfig: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = cluster.namespace
    ledger = tmp_path / "ledger.db"
    monkeypatch.setenv("TOURNIQUET_LEDGER", str(ledger))  # the operator is given the shared ledger
    start(cluster)  # revision 1 runs and is known good

    # The bad prompt ships through the gate (no case knows the failure yet) and is not yet proven good.
    docs = agent(BAD_PROMPT, EVALUATION, ledger=LEDGER_REF)
    docs[1]["spec"]["promotion"] = {"soakSeconds": 3600}
    cluster.apply(docs)
    job = wait_job(cluster, 2)
    code, message = run_eval(cluster, job, tmp_path / "eval-2")
    assert code == 0, message
    finish_job(cluster, job["metadata"]["name"], message=message, exit_code=code)
    wait_for(lambda: wired_revision(cluster) == "2", timeout=30, what="revision 2 rolled out")

    # It misbehaves: customers who ask twice are refunded twice.
    window_start = (datetime.now(UTC) - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    run_demo_agent(ledger)
    cluster.apply(
        [
            {
                "apiVersion": "tourniquet.dev/v1alpha1",
                "kind": "AgentIncident",
                "metadata": {"name": INCIDENT},
                "spec": {
                    "agents": ["refund-agent"],
                    "severity": "SEV1",
                    "class": "tool-misuse",
                    "summary": "Orders refunded twice",
                    "contain": ["revokeTools"],
                    "rollback": {"to": "lastKnownGood"},
                    "window": {"start": window_start},
                },
            }
        ]
    )
    # The rollback is never held: revision 1 runs again at once, and no evaluation Job is made for it.
    wait_for(lambda: wired_revision(cluster) == "1", timeout=30, what="rolled back to revision 1")
    assert sorted(j["metadata"]["labels"]["tourniquet.dev/revision"] for j in evaluation_jobs(cluster)) == ["2"]
    wait_for(lambda: cluster.status(AI, INCIDENT).get("phase") == "Contained", timeout=30, what="contained")
    assert tourniquet(oncall_kubeconfig, ns, "release", INCIDENT).exit_code == 0

    # The postmortem exists, every section filled from what happened.
    doc = wait_for(
        lambda: "resolved=true" in written_from(cluster) and postmortem(cluster), timeout=30, what="the postmortem"
    )
    assert doc["final"] and doc["timeline"]["timeToContainSeconds"] is not None
    assert doc["timeline"]["timeToResolveSeconds"] is not None
    assert doc["levers"] and all(lv["detail"] for lv in doc["levers"])
    assert doc["evidence"]["configMap"] == f"{INCIDENT}-evidence"
    radius = doc["ledger"]["refund-agent"]["blastRadius"]
    assert next(t for t in radius["tools"] if t["tool"] == "issue_refund")["actions"] >= 12
    assert doc["traces"] and all(t["trace"] for t in doc["traces"] if t["tool"] == "issue_refund")
    (revision,) = doc["revisions"]
    assert (revision["implicated"], revision["lastKnownGood"], revision["diff"]["changed"]) == (2, 1, ["prompt"])
    assert doc["questions"][4]["record"].startswith("none recorded yet: kubectl tourniquet regression")

    # A regression case from it: the implicated actions from the ledger, the behaviour expected.
    recorded = tourniquet(
        oncall_kubeconfig,
        ns,
        "regression",
        INCIDENT,
        "--ledger",
        str(ledger),
        "--expect",
        "each order is refunded at most once, however often its customer asks",
        "--max-calls",
        "issue_refund:order_id=1",
    )
    assert recorded.exit_code == 0, recorded.output
    refreshed = tourniquet(oncall_kubeconfig, ns, "postmortem", INCIDENT, "--refresh")
    assert f"**What test closes it?** The record: regression case(s): {INCIDENT}." in refreshed.output

    # A bundle change that does not fix it: its evaluation (the agent's eval command, given the case) fails; held.
    cluster.apply(agent("You are the refund assistant. Refund carefully.", EVALUATION, ledger=LEDGER_REF))
    job = wait_job(cluster, 3)
    code, message = run_eval(cluster, job, tmp_path / "eval-3")
    assert code == 1, message
    finish_job(cluster, job["metadata"]["name"], message=message, exit_code=code)
    failed = wait_for(lambda: gated_reason(cluster, "EvaluationFailed"), timeout=30, what="revision 3 held")
    assert f"{INCIDENT} (issue_refund called 2 times for order_id=" in failed["message"]
    assert wired_revision(cluster) == "1", "the consumers are untouched"

    # The fix (an idempotency key on issue_refund) passes the same case and rolls out.
    cluster.apply(fixed_bundle(agent(evaluation=EVALUATION, ledger=LEDGER_REF)))
    job = wait_job(cluster, 4)
    code, message = run_eval(cluster, job, tmp_path / "eval-4")
    assert code == 0, message
    finish_job(cluster, job["metadata"]["name"], message=message, exit_code=code)
    wait_for(lambda: wired_revision(cluster) == "4", timeout=30, what="the fix rolled out")
    wait_for(
        lambda: (cluster.status(AD, "refund-agent").get("evaluation") or {}).get("state") == "Passed",
        timeout=30,
        what="the evaluation recorded as passed",
    )
