"""Drills: contain the agent on purpose (shadow and revoke), measure containment and the runtime's acknowledgement,
check the evidence, release, and record the result where the readiness checklist reads it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from tests.conftest import AD, AI, CM, DEPLOY, Cluster, example, wait_for
from tests.operator.agentruntime import agent_runtime
from tests.operator.test_agentdeployment import wired_revision
from tests.operator.test_gate import EVALUATION
from tests.operator.test_incidents import control
from tests.operator.test_readiness import configured, items, readiness
from tourniquet.cli import main as cli

DRILLS = "tourniquet.dev/v1alpha1/agentdrills"


def tourniquet(kubeconfig: str, namespace: str, *args: str) -> Any:
    return CliRunner().invoke(cli, [*args, "--kubeconfig", kubeconfig, "-n", namespace])


def test_a_drill_contains_measures_releases_and_makes_a_configured_agent_5_of_5(
    cluster: Cluster, operator, kubeconfig: str, oncall_kubeconfig: str, tmp_path: Path
) -> None:
    docs = configured()
    cluster.apply(docs)
    wait_for(lambda: wired_revision(cluster) == "1", timeout=30, what="revision 1 wired")
    docs[1]["spec"]["evaluation"] = EVALUATION
    cluster.apply(docs)
    with agent_runtime(cluster, kubeconfig, tmp_path) as (_, ack):
        wait_for(lambda: ack.reported >= 1, timeout=30, what="the runtime reporting")
        wait_for(lambda: readiness(cluster).get("summary") == "4/5", timeout=30, what="4/5 before the drill")

        result = tourniquet(oncall_kubeconfig, cluster.namespace, "drill", "refund-agent", "--name", "game-day")
        assert result.exit_code == 0, result.output
        assert "Started drill game-day on refund-agent (shadow, revokeTools)." in result.output
        assert "Passed: contained in " in result.output and ", acknowledged by the runtime in " in result.output
        assert "  shadow: applied in " in result.output and "  revokeTools: applied in " in result.output
        assert "  evidence: ok: ConfigMap game-day-1-evidence" in result.output
        assert "  incident game-day-1: released" in result.output

        drill = cluster.get(DRILLS, "game-day")
        run = drill["status"]["lastRun"]
        assert (drill["status"]["phase"], run["result"], run["incident"], run["released"]) == (
            "Passed",
            "Passed",
            "game-day-1",
            True,
        )
        assert {lv["name"]: (lv["applied"], lv["acknowledged"]) for lv in run["levers"]} == {
            "shadow": (True, True),
            "revokeTools": (True, True),
        }
        assert 0 <= run["containedSeconds"] < 60 and 0 <= run["acknowledgedSeconds"] < 60
        assert run["trace"]["detail"].startswith("no ledger configured")
        # The drill's incident: its levers only, released; the agent is back to what it was.
        incident = cluster.get(AI, "game-day-1")
        assert incident["spec"]["drill"] is True and incident["spec"]["contain"] == ["shadow", "revokeTools"]
        assert incident["status"]["phase"] == "Resolved"
        assert control(cluster) == ("active", [])
        assert cluster.get(DEPLOY, "refund-agent-worker")["spec"]["replicas"] == 2  # never drained

        # The drill moved the kill-switch item: 5/5.
        done = wait_for(lambda: readiness(cluster).get("summary") == "5/5" and items(cluster), timeout=30, what="5/5")
        assert "drill game-day contained it in" in done["killSwitch"]["message"]

    from prometheus_client import generate_latest

    from tourniquet.observability import REGISTRY

    text = generate_latest(REGISTRY).decode()
    labels = f'agent="refund-agent",agent_namespace="{cluster.namespace}",result="Passed"'
    assert f"tourniquet_drill_runs_total{{{labels}}} 1.0" in text


def test_a_drill_without_a_runtime_fails_naming_the_lever_and_never_rolls_back(
    cluster: Cluster, operator, oncall_kubeconfig: str
) -> None:
    worker, agent = copy.deepcopy(example())
    agent["spec"]["response"]["SEV3"] = {"contain": [], "rollback": "lastKnownGood"}  # a drill never takes it
    agent["spec"]["promotion"] = {"soakSeconds": 0}
    cluster.apply([worker, agent])
    wait_for(
        lambda: (
            (cluster.get(CM, "refund-agent-bundle-1") or {})
            .get("metadata", {})
            .get("labels", {})
            .get("tourniquet.dev/verdict")
            == "good"
        ),
        timeout=30,
        what="revision 1 known good",
    )
    result = tourniquet(oncall_kubeconfig, cluster.namespace, "drill", "refund-agent", "--limit", "3", "--name", "d")
    assert result.exit_code == 1, result.output
    assert "Failed: did not land within 3s: shadow: not acknowledged: no agent pod reports its control flag" in (
        result.output
    )
    assert "revokeTools: not acknowledged" in result.output
    assert "  shadow: applied in " in result.output and "NOT acknowledged" in result.output
    assert "  incident d-1: released" in result.output
    assert control(cluster) == ("active", [])
    timeline = [e["event"] for e in cluster.status(AI, "d-1")["timeline"]]
    assert "RolledBack" not in timeline
    labels = cluster.get(CM, "refund-agent-bundle-1")["metadata"]["labels"]
    assert (
        labels.get("tourniquet.dev/verdict") == "good" and cluster.status(AD, "refund-agent")["bundle"]["revision"] == 1
    )
    kill_switch = wait_for(
        lambda: (
            items(cluster).get("killSwitch", {}).get("message", "").count("no drill contained it")
            and items(cluster)["killSwitch"]
        ),
        timeout=30,
        what="the checklist",
    )
    assert kill_switch["ready"] is False


def test_the_cli_refuses_a_missing_agent_and_a_drill_waits_for_calm(
    cluster: Cluster, operator, oncall_kubeconfig: str
) -> None:
    cluster.apply(example())
    missing = tourniquet(oncall_kubeconfig, cluster.namespace, "drill", "refund-agnet")
    assert missing.exit_code == 1 and "AgentDeployment refund-agnet not found" in missing.output
    assert cluster.list(DRILLS) == []
    bad = tourniquet(oncall_kubeconfig, cluster.namespace, "drill", "refund-agent", "--levers", "shadow,explode")
    assert bad.exit_code == 1 and "spec.levers.1" in bad.output
    # A real incident is open: the drill is skipped, and says why.
    cluster.apply(
        [
            {
                "apiVersion": "tourniquet.dev/v1alpha1",
                "kind": "AgentIncident",
                "metadata": {"name": "real-one"},
                "spec": {"agents": ["refund-agent"], "severity": "SEV3"},
            }
        ]
    )
    skipped = tourniquet(oncall_kubeconfig, cluster.namespace, "drill", "refund-agent", "--name", "calm")
    assert skipped.exit_code == 0, skipped.output  # not a failure: it did not run, and says why
    assert "Skipped: incident(s) real-one are open on refund-agent: a drill waits for calm" in skipped.output
    assert cluster.get(AI, "calm-1") is None


def test_a_scheduled_drill_runs_at_its_time(cluster: Cluster, operator, kubeconfig: str, tmp_path: Path) -> None:
    cluster.apply(example())
    with agent_runtime(cluster, kubeconfig, tmp_path) as (_, ack):
        wait_for(lambda: ack.reported >= 1, timeout=30, what="the runtime reporting")
        cluster.apply(
            [
                {
                    "apiVersion": "tourniquet.dev/v1alpha1",
                    "kind": "AgentDrill",
                    "metadata": {"name": "every-minute"},
                    "spec": {"agent": "refund-agent", "schedule": "* * * * *", "levers": ["shadow"]},
                }
            ]
        )
        status = wait_for(
            lambda: (
                (cluster.status(DRILLS, "every-minute").get("lastRun") or {}).get("result") == "Passed"
                and cluster.status(DRILLS, "every-minute")
            ),
            timeout=150,
            what="the first scheduled run",
        )
    assert status["runs"] == 1 and status["nextRunAt"] > status["lastRun"]["startedAt"]
    assert status["lastRun"]["startedAt"][17:19] <= "05", "it started at the top of a minute"


def test_a_drill_reads_a_decision_trace_from_the_ledger_the_operator_is_given(
    cluster: Cluster, operator, kubeconfig: str, oncall_kubeconfig: str, tmp_path: Path, monkeypatch
) -> None:
    from tests.operator.test_postmortem import run_demo_agent

    ledger = tmp_path / "ledger.db"
    run_demo_agent(ledger)  # the agent's latest actions, with their decision traces
    monkeypatch.setenv("TOURNIQUET_LEDGER", str(ledger))
    docs = example()
    docs[1]["spec"]["ledger"] = {"secretRef": {"name": "refund-ledger", "key": "url"}}
    cluster.apply(docs)
    with agent_runtime(cluster, kubeconfig, tmp_path) as (_, ack):
        wait_for(lambda: ack.reported >= 1, timeout=30, what="the runtime reporting")
        result = tourniquet(oncall_kubeconfig, cluster.namespace, "drill", "refund-agent", "--name", "traced")
    assert result.exit_code == 0, result.output
    assert "  trace: ok: decision trace of the latest action read from the ledger (issue_refund, " in result.output
    assert cluster.status(DRILLS, "traced")["lastRun"]["trace"]["ok"] is True
