"""The operator's side of undo, with the real operator and the tests' PostgreSQL as the agents' shared ledger:
the blast radius and the plan in the incident's status, approval by hash, the compensation Job, its progress,
and the refusals that execute nothing.

There is no kubelet on either API server, so the Job's pod never runs: the test runs the worker itself, as a
subprocess with the Job's own command and environment (the ledger URL resolved from the Secret the Job names),
and the operator reports what the ledger then shows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner

from tests.conftest import AD, AI, ROOT, Cluster, OperatorProcess, example, wait_for
from tests.operator.test_cli_undo import refund
from tourniquet import cli, observability
from tourniquet.domain.compensation_job import WORKER_COMMAND, compensation_job_name
from tourniquet.runtime import open_ledger

JOBS = "batch/v1/jobs"
SECRETS = "v1/secrets"
EVENTS = "v1/events"
INCIDENT = "dup-refunds"
SECRET = "refund-ledger"
WINDOW = {"start": "2026-11-21T03:00:00Z", "end": "2026-11-21T03:10:00Z"}


@pytest.fixture(autouse=True)
def no_ledger_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOURNIQUET_LEDGER", raising=False)
    monkeypatch.delenv("TOURNIQUET_LEDGER_URL_FILE", raising=False)


@pytest.fixture
def ledger_url(postgres_url: str) -> str:
    """Refunds in the ledger and in the demo's payments table (same database): two of the window's four are
    duplicates (k2 of k1's order, k3 of a refund before the window)."""
    sys.path.insert(0, str(ROOT / "examples"))
    from refund_agent.payments import Payments

    payments = Payments(postgres_url)
    try:
        payments.add_orders([("o1", "customer:7", 2500), ("o2", "customer:7", 2500), ("o3", "customer:7", 2500)])
        refunds = [("before", -5, "o1", 2500), ("k1", 1, "o2", 2500), ("k2", 2, "o2", 2500), ("k3", 3, "o1", 2500),
                   ("k4", 4, "o3", 1000), ("after", 20, "o3", 2500)]
        with open_ledger(postgres_url) as ledger:
            for key, minute, order, amount in refunds:
                payments.refund(order, amount, idempotency_key=key)
                ledger.record(refund(key, minute, order, amount=amount))
    finally:
        payments.close()
    return postgres_url


def payments_of(url: str) -> Any:
    sys.path.insert(0, str(ROOT / "examples"))
    from refund_agent.payments import Payments

    return Payments(url)


def agent_with_ledger() -> list[dict[str, Any]]:
    docs = example()
    agent = next(d for d in docs if d["kind"] == "AgentDeployment")
    agent["spec"]["ledger"] = {"secretRef": {"name": SECRET, "key": "url"}}
    agent["spec"]["compensation"] = {"modules": ["refund_agent.compensators"]}
    return docs


def secret(url: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET}, "stringData": {"url": url}}


def the_incident(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tourniquet.dev/v1alpha1",
        "kind": "AgentIncident",
        "metadata": {"name": INCIDENT},
        "spec": {"agents": ["refund-agent"], "severity": "SEV2", "contain": [], "window": WINDOW, **spec},
    }


def status(cluster: Cluster) -> dict[str, Any]:
    return cluster.status(AI, INCIDENT, cluster.namespace)


def condition(cluster: Cluster, type_: str) -> dict[str, Any]:
    return next((c for c in status(cluster).get("conditions") or [] if c["type"] == type_), {})


def jobs(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.list(JOBS, cluster.namespace)


def approve(cluster: Cluster, kubeconfig: str, plan_hash: str, url: str) -> None:
    result = CliRunner().invoke(
        cli.main,
        ["compensate", INCIDENT, "--duplicates-only", "--approve", plan_hash, "--by", "alice@example.com",
         "--ledger", url, "--kubeconfig", kubeconfig, "-n", cluster.namespace],
    )
    assert result.exit_code == 0, result.output


def run_worker(job: dict[str, Any], ledger: str) -> subprocess.CompletedProcess[str]:
    """What the Job's pod would run: its command, its environment (the Secret it names resolved to the ledger)."""
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOURNIQUET_")}
    for entry in container.get("env") or []:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif (entry.get("valueFrom") or {}).get("secretKeyRef") == {"name": SECRET, "key": "url"}:
            env[entry["name"]] = ledger
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "examples"), str(ROOT / "operator")])
    command = [sys.executable if part == "python" else part for part in container["command"]]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def compensations(outcome: str) -> float:
    return observability.REGISTRY.get_sample_value("tourniquet_compensations_total", {"outcome": outcome}) or 0.0


def test_blast_radius_plan_approval_and_the_job_compensate_the_duplicates_once(
    cluster: Cluster, operator: OperatorProcess, oncall_kubeconfig: str, ledger_url: str
) -> None:
    cluster.apply([secret(ledger_url), *agent_with_ledger(), the_incident()])

    # The blast radius of the window, per tool, from the ledger.
    blast = wait_for(lambda: status(cluster).get("blastRadius"), timeout=30, what="status.blastRadius")
    assert (blast["actions"], blast["byTool"], blast["subjects"]) == (4, {"issue_refund": 4}, 4)
    assert (blast["reversible"], blast["irreversible"], blast["amounts"]) == (4, 0, {"USD cents": 8500})
    assert blast["window"] == {
        "start": "2026-11-21T03:00:00.000000Z", "end": "2026-11-21T03:10:00.000000Z", "source": "spec.window.start"
    }
    assert blast["tools"][0]["compensation"] == "reversal"
    timeline = status(cluster)["timeline"]
    assert any(e["event"] == "BlastRadius" and e["message"].startswith("4 actions (issue_refund 4)") for e in timeline)

    # The plan of every window action, awaiting approval; then only the duplicates.
    plan = wait_for(lambda: (status(cluster).get("compensation") or {}).get("plan"), what="the plan")
    assert (plan["actions"], plan["planned"]) == (4, 4)
    assert condition(cluster, "Compensated")["reason"] == "AwaitingApproval"
    cluster.patch(AI, INCIDENT, {"spec": {"compensate": {"duplicatesOnly": True}}}, namespace=cluster.namespace)
    plan = wait_for(
        lambda: (p := (status(cluster).get("compensation") or {}).get("plan")) and p["actions"] == 2 and p,
        what="the duplicates' plan",
    )
    assert plan["hash"] in condition(cluster, "Compensated")["message"]

    # A stale hash: a clear condition, no Job.
    stale = "0" * 64
    cluster.patch(AI, INCIDENT, {"spec": {"compensate": {"approved": True, "planHash": stale}}},
                  namespace=cluster.namespace)
    refused = wait_for(lambda: condition(cluster, "Compensated").get("reason") == "PlanChanged"
                       and condition(cluster, "Compensated"), what="PlanChanged")
    assert "0000000000000000… is not the current plan" in refused["message"] and "nothing new was executed" in refused[
        "message"]
    assert not jobs(cluster)

    # The shown plan approved (on-call's CLI): the Job, named after the plan, built from the consumer.
    done_before = compensations("done")
    approve(cluster, oncall_kubeconfig, plan["hash"], ledger_url)
    name = compensation_job_name(INCIDENT, plan["hash"])
    job = wait_for(lambda: cluster.get(JOBS, name, cluster.namespace), timeout=30, what="the compensation Job")
    worker = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in worker["env"]}
    assert worker["command"] == WORKER_COMMAND and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert worker["image"] == cluster.get("apps/v1/deployments", "refund-agent-worker", cluster.namespace)[
        "spec"]["template"]["spec"]["containers"][0]["image"]
    assert env["TOURNIQUET_COMPENSATION_PLAN_HASH"]["value"] == plan["hash"]
    assert env["TOURNIQUET_INCIDENT"]["value"] == f"{cluster.namespace}/{INCIDENT}"
    assert env["TOURNIQUET_COMPENSATORS"]["value"] == "refund_agent.compensators"
    assert env["TOURNIQUET_LEDGER"]["valueFrom"] == {"secretKeyRef": {"name": SECRET, "key": "url"}}
    assert job["metadata"]["ownerReferences"][0]["name"] == INCIDENT
    running = wait_for(lambda: condition(cluster, "Compensated").get("reason") == "Running"
                       and status(cluster)["compensation"], what="Running")
    assert (running["planned"], running["pending"], running["done"], running["job"]) == (2, 2, 0, name)

    # The pod the kubelet would run: the duplicates reversed, once each.
    result = run_worker(job, ledger_url)
    assert result.returncode == 0, result.stdout + result.stderr
    complete = wait_for(lambda: condition(cluster, "Compensated").get("status") == "True"
                        and status(cluster)["compensation"], timeout=30, what="Compensated")
    assert (complete["done"], complete["failed"], complete["pending"]) == (2, 0, 0)
    assert condition(cluster, "Compensated")["reason"] == "Complete"
    payments = payments_of(ledger_url)
    try:
        assert payments.reversed_keys() == {"k2", "k3"} and payments.reversal_calls() == 2
        # o1 and o2 refunded once again; o3's refund after the window is not the incident's to undo.
        assert payments.net_by_order() == {"o1": 2500, "o2": 2500, "o3": 3500}
    finally:
        payments.close()
    events = {e["event"] for e in status(cluster)["timeline"]}
    assert {"CompensationPlanned", "CompensationRefused", "CompensationStarted", "Compensated"} <= events
    wait_for(lambda: [e for e in cluster.list(EVENTS, cluster.namespace)
                      if e["involvedObject"]["name"] == INCIDENT and e["reason"] == "Compensated"], what="the Event")
    assert compensations("done") - done_before == 2

    # A restarted operator, the Job gone: nothing is created again, nothing compensated twice.
    operator.stop()
    cluster.delete(JOBS, name, cluster.namespace)
    wait_for(lambda: not [j for j in jobs(cluster) if not j["metadata"].get("deletionTimestamp")], what="Job gone")
    operator.start()
    generation = cluster.patch(AI, INCIDENT, {"spec": {"summary": "duplicate refunds"}},
                               namespace=cluster.namespace)["metadata"]["generation"]
    wait_for(lambda: status(cluster).get("observedGeneration") == generation, timeout=30, what="a pass after restart")
    assert condition(cluster, "Compensated")["reason"] == "Complete"
    assert not [j for j in jobs(cluster) if not j["metadata"].get("deletionTimestamp")]
    payments = payments_of(ledger_url)
    try:
        assert payments.reversal_calls() == 2
    finally:
        payments.close()


def test_bad_input_gets_a_clear_condition_and_executes_nothing(
    cluster: Cluster, operator: OperatorProcess, ledger_url: str
) -> None:
    cluster.apply([secret(ledger_url), *agent_with_ledger()])
    # An unknown tool in the selector, approved with a hash: refused, no plan in status, no Job.
    cluster.apply([the_incident(compensate={"approved": True, "planHash": "a" * 64, "tools": ["send_email"]})])
    refused = wait_for(lambda: condition(cluster, "Compensated").get("reason") == "InvalidPlan"
                       and condition(cluster, "Compensated"), timeout=30, what="InvalidPlan")
    assert "unknown tool send_email in the selector" in refused["message"]
    assert "nothing was executed" in refused["message"]
    assert "plan" not in (status(cluster).get("compensation") or {})
    assert status(cluster)["blastRadius"]["actions"] == 4  # the blast radius does not depend on the selection
    assert not jobs(cluster)

    # A reversal by a tool the bundle does not declare.
    agent = cluster.get(AD, "refund-agent", cluster.namespace)
    tools = agent["spec"]["bundle"]["tools"]
    tools[:] = [t for t in tools if t["name"] != "reverse_refund"]
    cluster.patch(AD, "refund-agent", {"spec": {"bundle": {**agent["spec"]["bundle"], "tools": tools}}},
                  namespace=cluster.namespace)
    cluster.patch(AI, INCIDENT, {"spec": {"compensate": {"tools": None}}}, namespace=cluster.namespace)
    refused = wait_for(lambda: "reverse_refund, which the bundle does not declare"
                       in condition(cluster, "Compensated").get("message", "")
                       and condition(cluster, "Compensated"), timeout=30, what="the undeclared reversal refused")
    assert refused["reason"] == "InvalidPlan"
    assert not jobs(cluster)


def test_an_unreachable_ledger_is_a_condition_retried_until_it_is_read(
    cluster: Cluster, operator: OperatorProcess, ledger_url: str
) -> None:
    cluster.apply([secret("postgresql://tourniquet@127.0.0.1:1/nowhere"), *agent_with_ledger(), the_incident()])
    down = wait_for(lambda: condition(cluster, "LedgerUnavailable").get("status") == "True"
                    and condition(cluster, "LedgerUnavailable"), timeout=30, what="LedgerUnavailable")
    assert "127.0.0.1:1" in down["message"] and "retried" in down["message"]
    assert "blastRadius" not in status(cluster) and "plan" not in (status(cluster).get("compensation") or {})
    assert any(e["event"] == "LedgerUnavailable" for e in status(cluster)["timeline"])

    # The Secret fixed: a retry reads the ledger (no spec change needed).
    cluster.apply([secret(ledger_url)])
    blast = wait_for(lambda: status(cluster).get("blastRadius"), timeout=60, what="the blast radius after the fix")
    assert blast["actions"] == 4
    assert condition(cluster, "LedgerUnavailable")["status"] == "False"
    assert not jobs(cluster)


def agent_naming_no_ledger() -> list[dict[str, Any]]:
    docs = agent_with_ledger()
    del next(d for d in docs if d["kind"] == "AgentDeployment")["spec"]["ledger"]
    return docs


def test_an_agent_naming_no_ledger_reads_the_operators_default_ledger_secret(
    cluster: Cluster, operator: OperatorProcess, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The chart's ledger.defaultSecret: the Secret of that name in the agent's own namespace.
    monkeypatch.setenv("TOURNIQUET_LEDGER_SECRET", f"{SECRET}/url")
    cluster.apply([secret(ledger_url), *agent_naming_no_ledger(), the_incident()])
    blast = wait_for(lambda: status(cluster).get("blastRadius"), timeout=30, what="the default ledger's blast radius")
    assert (blast["actions"], blast["byTool"]) == (4, {"issue_refund": 4})


def test_a_missing_default_ledger_secret_says_it_is_the_charts_default(
    cluster: Cluster, operator: OperatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOURNIQUET_LEDGER_SECRET", SECRET)  # a name the operator may read, not created
    cluster.apply([*agent_naming_no_ledger(), the_incident()])
    down = wait_for(lambda: condition(cluster, "LedgerUnavailable").get("status") == "True"
                    and condition(cluster, "LedgerUnavailable"), timeout=30, what="LedgerUnavailable")
    assert down["reason"] == "SecretNotFound"
    assert f"Secret {SECRET} (the chart's ledger.defaultSecret) not found" in down["message"]


def test_a_missing_secret_names_itself(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.apply([*agent_with_ledger(), the_incident()])
    down = wait_for(lambda: condition(cluster, "LedgerUnavailable").get("status") == "True"
                    and condition(cluster, "LedgerUnavailable"), timeout=30, what="LedgerUnavailable")
    assert down["reason"] == "SecretNotFound" and f"Secret {SECRET}" in down["message"]



def test_a_compensation_under_way_is_followed_after_the_incident_is_resolved(
    cluster: Cluster, operator: OperatorProcess, oncall_kubeconfig: str, ledger_url: str
) -> None:
    cluster.apply([secret(ledger_url), *agent_with_ledger(), the_incident(compensate={"duplicatesOnly": True})])
    plan = wait_for(lambda: (status(cluster).get("compensation") or {}).get("plan"), timeout=30, what="the plan")
    approve(cluster, oncall_kubeconfig, plan["hash"], ledger_url)
    job = wait_for(lambda: cluster.get(JOBS, compensation_job_name(INCIDENT, plan["hash"]), cluster.namespace),
                   timeout=30, what="the compensation Job")
    wait_for(lambda: condition(cluster, "Compensated").get("reason") == "Running", what="Running")

    # On-call resolves before the Job is done: the incident is Resolved, and its compensation is still read.
    cluster.patch(AI, INCIDENT, {"spec": {"resolved": True}}, namespace=cluster.namespace)
    wait_for(lambda: status(cluster).get("phase") == "Resolved", what="resolved")
    assert condition(cluster, "Compensated")["reason"] == "Running"
    operator.stop()  # and a restarted operator follows it too
    result = run_worker(job, ledger_url)
    assert result.returncode == 0, result.stdout + result.stderr
    operator.start()
    complete = wait_for(lambda: condition(cluster, "Compensated").get("status") == "True"
                        and status(cluster)["compensation"], timeout=30, what="Compensated after resolution")
    assert (complete["done"], complete["pending"]) == (2, 0)
    assert status(cluster)["phase"] == "Resolved"
