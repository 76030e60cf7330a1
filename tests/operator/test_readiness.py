"""The readiness checklist on every AgentDeployment: five questions, observed, each with what to do when missing."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from tests.conftest import AD, CM, Cluster, example, wait_for
from tests.operator.agentruntime import agent_runtime
from tests.operator.test_agentdeployment import wired_revision
from tests.operator.test_gate import EVALUATION
from tourniquet.cli import main as cli


def readiness(cluster: Cluster) -> dict[str, Any]:
    return cluster.status(AD, "refund-agent").get("readiness") or {}


def items(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in readiness(cluster).get("items") or []}


def bare() -> list[dict[str, Any]]:
    """An agent that answers no to everything: a write tool with no way back, an image tagged latest, a ledger in
    the pod, no evaluation, no runtime reporting back."""
    worker, agent = copy.deepcopy(example())
    worker["spec"]["template"]["spec"]["containers"][0]["image"] = "ghcr.io/example/refund-agent:latest"
    agent["spec"]["bundle"]["tools"].append(
        {"name": "send_email", "sideEffects": "write", "schema": {"type": "object"}}
    )
    return [worker, agent]


def configured() -> list[dict[str, Any]]:
    """The example agent, plus a shared ledger with traces kept 45 days, and a redeploy gate."""
    worker, agent = copy.deepcopy(example())
    worker["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "TOURNIQUET_LEDGER_DSN", "valueFrom": {"secretKeyRef": {"name": "refund-ledger", "key": "dsn"}}},
        {"name": "TOURNIQUET_TRACE_RETENTION_DAYS", "value": "45"},
    ]
    return [worker, agent]


def tourniquet(kubeconfig: str, namespace: str, *args: str) -> Any:
    return CliRunner().invoke(cli, [*args, "--kubeconfig", kubeconfig, "-n", namespace])


def test_a_bare_agent_is_0_of_5_and_each_missing_item_says_how_to_fix_it(
    cluster: Cluster, operator, oncall_kubeconfig: str
) -> None:
    cluster.apply(bare())
    wait_for(lambda: readiness(cluster).get("summary") == "0/5", timeout=30, what="the checklist")
    found = items(cluster)
    assert list(found) == ["killSwitch", "versionPin", "compensation", "traceRetention", "redeployGate"]
    assert "no agent pod acknowledged the control ConfigMap within the last 15 min" in found["killSwitch"]["message"]
    assert "no drill contained it in under 60s in the last 30 days" in found["killSwitch"]["message"]
    assert "kubectl tourniquet drill refund-agent" in found["killSwitch"]["fix"]
    assert "runs ghcr.io/example/refund-agent:latest" in found["versionPin"]["message"]
    assert found["compensation"]["message"] == "write tool(s) without a reversal or mitigation: send_email"
    assert "keeps its ledger in the pod" in found["traceRetention"]["message"]
    assert "no spec.evaluation" in found["redeployGate"]["message"]
    assert all(i["fix"] for i in found.values())
    # The acknowledgement ConfigMap the runtime reports into exists, owned by the agent.
    ack = cluster.get(CM, "refund-agent-control-ack")
    assert ack["metadata"]["ownerReferences"][0]["name"] == "refund-agent"

    shown = tourniquet(oncall_kubeconfig, cluster.namespace, "readiness", "refund-agent")
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith("refund-agent: 0/5 ready")
    assert "MISSING  compensation: write tool(s) without a reversal or mitigation: send_email" in shown.output
    assert "fix: declare compensation on each" in shown.output
    table = tourniquet(oncall_kubeconfig, cluster.namespace, "readiness", "--strict")
    assert table.exit_code == 1
    assert "refund-agent  0/5        killSwitch, versionPin, compensation, traceRetention, redeployGate" in table.output

    # A metric per item.
    from prometheus_client import generate_latest

    from tourniquet.observability import REGISTRY

    text = generate_latest(REGISTRY).decode()
    labels = f'agent="refund-agent",agent_namespace="{cluster.namespace}",item="compensation"'
    line = f"tourniquet_agent_readiness{{{labels}}} 0.0"
    assert line in text


def test_a_configured_agent_misses_only_its_drill_and_the_runtime_acknowledgement_counts(
    cluster: Cluster, operator, kubeconfig: str, oncall_kubeconfig: str, tmp_path: Path
) -> None:
    docs = configured()
    cluster.apply(docs)
    wait_for(lambda: wired_revision(cluster) == "1", timeout=30, what="revision 1 wired")
    docs[1]["spec"]["evaluation"] = EVALUATION  # the same bundle: nothing to evaluate, the gate is configured
    cluster.apply(docs)
    wait_for(lambda: items(cluster).get("redeployGate", {}).get("ready"), timeout=30, what="the gate counted")
    found = items(cluster)
    assert readiness(cluster)["summary"] == "4/5"
    assert found["versionPin"]["message"] == (
        "model gpt-5 pinned at 2026-08-06; every consumer runs bundle revision 1 with pinned images"
    )
    assert found["compensation"]["message"].startswith("every write tool declares its undo: issue_refund (reversal")
    assert found["traceRetention"]["message"] == (
        "decision traces kept in the shared ledger: Deployment refund-agent-worker: 45 days"
    )

    with agent_runtime(cluster, kubeconfig, tmp_path) as (_, ack):
        wait_for(lambda: ack.reported >= 1, timeout=30, what="the runtime acknowledged")
        reported = json.loads(cluster.get(CM, "refund-agent-control-ack")["data"]["refund-agent-worker-7f9c4"])
        assert (reported["mode"], reported["revokedTools"], reported["source"]) == ("active", [], "api")
        seen = wait_for(
            lambda: (
                "acknowledged the control ConfigMap (mode active)" in items(cluster)["killSwitch"]["message"]
                and items(cluster)["killSwitch"]
            ),
            timeout=30,
            what="the acknowledgement in the checklist",
        )
    assert not seen["ready"] and "no drill contained it" in seen["message"], "an acknowledgement alone is not enough"
