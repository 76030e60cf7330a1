"""What an on-call engineer reads in the statuses while an incident runs its course (issue 14): the incident's and
the agent's status say what is observed, settle when the world has settled, and forget what is over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from tests.conftest import AD, AI, CM, DEPLOY, Cluster, example, wait_for
from tests.operator.test_incidents import condition, contained, incident, replicas, start_agent
from tourniquet.cli import main as cli
from tourniquet.domain.detection import Signal
from tourniquet.models import Severity
from tourniquet.models.agentincident import IncidentClass
from tourniquet.reconcilers.signals import record_signal


def test_the_agent_forgets_an_incident_once_it_is_resolved(cluster: Cluster, operator):
    start_agent(cluster)
    cluster.apply([incident("stale", contain=["drain"])])
    wait_for(
        lambda: (cluster.status(AD, "refund-agent").get("containment") or {}).get("incidents") == ["stale"],
        what="the agent's containment lists the incident",
    )
    cluster.patch(AI, "stale", {"spec": {"resolved": True}})
    wait_for(
        lambda: (
            replicas(cluster) == 2
            and condition(cluster, AD, "refund-agent", "Contained").get("reason") == "NoOpenIncident"
        ),
        what="released, and the agent says no incident is open",
    )
    # The same status no longer lists the incident nor its drain (no "drain: Applied 2 → 0" left behind).
    assert "containment" not in cluster.status(AD, "refund-agent"), cluster.status(AD, "refund-agent")


def test_the_bundle_reads_frozen_while_an_incident_is_open_on_the_agent(cluster: Cluster, operator):
    start_agent(cluster)
    assert condition(cluster, AD, "refund-agent", "BundleFrozen")["status"] == "False"
    cluster.apply([incident("sev1")])  # no new bundle revision in sight: the bundle is held all the same
    frozen = wait_for(
        lambda: (
            condition(cluster, AD, "refund-agent", "BundleFrozen").get("status") == "True"
            and condition(cluster, AD, "refund-agent", "BundleFrozen")
        ),
        what="BundleFrozen=True",
    )
    assert frozen["reason"] == "IncidentOpen" and "sev1" in frozen["message"], frozen
    cluster.patch(AI, "sev1", {"spec": {"resolved": True}})
    thawed = wait_for(
        lambda: (
            condition(cluster, AD, "refund-agent", "BundleFrozen").get("status") == "False"
            and condition(cluster, AD, "refund-agent", "BundleFrozen")
        ),
        what="BundleFrozen=False",
    )
    assert thawed["reason"] == "NotFrozen"


def test_a_lever_taken_out_of_contain_is_released_and_the_incident_settles_contained(cluster: Cluster, operator):
    start_agent(cluster)
    cluster.apply([incident("deescalate", contain=["revokeTools", "drain"])])
    wait_for(lambda: contained(cluster, "deescalate") and replicas(cluster) == 0, what="Contained, drained")

    cluster.patch(AI, "deescalate", {"spec": {"contain": ["revokeTools"]}})  # on-call de-escalates
    wait_for(lambda: replicas(cluster) == 2, what="the drain released")
    status = wait_for(
        lambda: (
            cluster.status(AI, "deescalate").get("observedGeneration") == 2
            and contained(cluster, "deescalate")
            and cluster.status(AI, "deescalate")
        ),
        what="the incident settled Contained on what it still holds",
    )
    levers = {lv["name"]: lv for lv in status["levers"]}
    assert levers["revokeTools"]["state"] == "Applied"
    assert levers["drain"]["state"] == "Released", levers["drain"]
    assert any(e["event"] == "LeverReleased" and e["message"].startswith("drain") for e in status["timeline"])
    assert condition(cluster, AI, "deescalate", "Contained")["reason"] == "LeversApplied"
    wait_for(
        lambda: condition(cluster, AD, "refund-agent", "Contained").get("message", "").startswith("revokeTools"),
        what="the agent holds revokeTools only",
    )


def test_a_lever_another_incident_already_holds_is_reported_applied_with_it_in_the_same_pass(
    cluster: Cluster, operator, oncall_kubeconfig
):
    start_agent(cluster)
    cluster.apply([incident("first", severity="SEV2", contain=["drain"])])
    wait_for(lambda: contained(cluster, "first") and replicas(cluster) == 0, what="first drains the worker")

    # The SEV1 playbook: revokeTools and drain; the drain is already in force, held by `first`.
    common = ["--kubeconfig", oncall_kubeconfig, "-n", cluster.namespace]
    result = CliRunner().invoke(cli, ["contain", "refund-agent", "--sev", "1", "--name", "second", *common])
    assert result.exit_code == 0, result.output
    assert "phase: Contained" in result.output
    drain_line = next((line for line in result.output.splitlines() if "refund-agent/drain" in line), "")
    assert "Applied" in drain_line and "held with first" in drain_line, result.output

    status = cluster.status(AI, "second")
    levers = {lv["name"]: lv for lv in status["levers"]}
    assert levers.keys() == {"revokeTools", "drain"} and levers["drain"]["state"] == "Applied", levers
    events = [(e["event"], e.get("message", "").split(":")[0]) for e in status["timeline"]]
    contained_at = events.index(("Contained", "every lever observed applied"))
    assert events.index(("LeverApplied", "drain")) < contained_at, events
    assert next(i for i, e in enumerate(events) if e[0] == "EvidenceCaptured") < contained_at, events
    applied = next(e for e in status["timeline"] if e["event"] == "LeverApplied" and e["message"].startswith("drain"))
    assert applied["message"].endswith("held with first"), applied


def _contained_entry_seconds(status: dict) -> float:
    """From status.timings.startedAt to the timeline's Contained entry (the moment the operator observed it)."""
    entry = next(e for e in status["timeline"] if e["event"] == "Contained")
    return (_time(entry["time"]) - _time(status["timings"]["startedAt"])).total_seconds()


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_contain_is_timed_from_the_moment_the_cli_opened_the_incident(cluster: Cluster, operator, oncall_kubeconfig):
    start_agent(cluster)
    common = ["--kubeconfig", oncall_kubeconfig, "-n", cluster.namespace]
    result = CliRunner().invoke(cli, ["contain", "refund-agent", "--sev", "2", "--name", "timed", *common])
    assert result.exit_code == 0, result.output

    body = cluster.get(AI, "timed")
    opened_at = body["metadata"]["annotations"]["tourniquet.dev/opened-at"]  # microseconds, not the second
    timings = body["status"]["timings"]
    assert (timings["startedFrom"], timings["startedAt"]) == ("openedAt", opened_at), timings
    # containedSeconds is what elapsed from that moment to Contained, not from the creationTimestamp's second.
    assert abs(timings["containedSeconds"] - _contained_entry_seconds(body["status"])) < 0.002, timings
    assert f"contained {timings['containedSeconds']:.2f}s after it was opened" in result.output, result.output


def test_an_incident_applied_by_hand_is_timed_from_when_the_operator_first_saw_it(cluster: Cluster, operator):
    start_agent(cluster)
    cluster.apply([incident("by-hand", contain=["shadow"])])  # kubectl apply: no opened-at annotation
    wait_for(lambda: contained(cluster, "by-hand"), what="Contained")
    body = cluster.get(AI, "by-hand")
    timings = body["status"]["timings"]
    assert timings["startedFrom"] == "firstSeen", timings
    created = _time(body["metadata"]["creationTimestamp"])
    assert created <= _time(timings["startedAt"]) < created + timedelta(seconds=2), (created, timings)
    assert abs(timings["containedSeconds"] - _contained_entry_seconds(body["status"])) < 0.002, timings


async def test_an_incident_detection_opens_is_timed_from_its_opened_at_annotation(cluster: Cluster, kube, operator):
    start_agent(cluster)
    signal = Signal(
        cluster.namespace,
        "refund-agent",
        "DuplicateRefunds",
        "alertmanager",
        Severity.SEV2,
        IncidentClass.TOOL_MISUSE,
        "duplicate refunds",
        datetime.now(UTC),
    )
    outcome = await record_signal(kube, signal)
    assert outcome.outcome == "opened", outcome
    timings = wait_for(
        lambda: (
            (cluster.status(AI, outcome.incident).get("timings") or {}).get("startedFrom")
            and cluster.status(AI, outcome.incident)["timings"]
        ),
        what="timings",
    )
    annotations = cluster.get(AI, outcome.incident)["metadata"]["annotations"]
    assert (timings["startedFrom"], timings["startedAt"]) == ("openedAt", annotations["tourniquet.dev/opened-at"])


def _agent_missing(cluster: Cluster, name: str) -> dict:
    return condition(cluster, AI, name, "AgentsMissing")


def _warnings(cluster: Cluster, incident_name: str) -> list[str]:
    return [
        f"{e['reason']}: {e.get('message', '')}"
        for e in cluster.list("v1/events")
        if e["involvedObject"]["name"] == incident_name and e.get("type") == "Warning"
    ]


def _another_agent(name: str) -> list[dict]:
    """The example agent and its worker under another name (what the typo named, created later)."""
    worker, agent = example()
    worker["metadata"]["name"] = f"{name}-worker"
    worker["metadata"]["labels"] = worker["spec"]["selector"]["matchLabels"] = {"app": name}
    worker["spec"]["template"]["metadata"]["labels"] = {"app": name}
    agent["metadata"]["name"] = name
    agent["spec"]["consumers"] = [{"kind": "Deployment", "name": f"{name}-worker"}]
    agent["spec"]["podSelector"] = {"matchLabels": {"app": name}}
    return [worker, agent]


def test_a_misspelled_agent_does_not_keep_the_real_one_from_being_contained(
    cluster: Cluster, operator, oncall_kubeconfig
):
    start_agent(cluster)
    # kubectl apply of an incident with one typo: the API server cannot tell; the operator contains what exists.
    cluster.apply([incident("typo", agents=["refund-agent", "refund-agnet"], contain=["drain"])])
    wait_for(lambda: replicas(cluster) == 0, what="the real agent drained")
    missing = wait_for(
        lambda: _agent_missing(cluster, "typo").get("status") == "True" and _agent_missing(cluster, "typo")
    )
    assert "AgentDeployment refund-agnet not found" in missing["message"], missing
    assert "refund-agent " not in missing["message"] and "refund-agent," not in missing["message"]
    assert condition(cluster, AI, "typo", "Accepted")["status"] == "True"
    status = cluster.status(AI, "typo")
    assert status["phase"] == "Containing", status["phase"]  # never Contained while a named agent is not
    assert [(lv["agent"], lv["name"], lv["state"]) for lv in status["levers"]] == [("refund-agent", "drain", "Applied")]
    warned = wait_for(lambda: [w for w in _warnings(cluster, "typo") if "refund-agnet" in w], what="a Warning Event")
    assert warned[0].startswith("AgentMissing: refund-agnet"), warned

    shown = CliRunner().invoke(cli, ["status", "--kubeconfig", oncall_kubeconfig, "-n", cluster.namespace])
    assert shown.exit_code == 0, shown.output
    assert "typo" in shown.output and "AgentDeployment refund-agnet not found" in shown.output, shown.output

    # The operator keeps trying: once the agent it named exists, it is contained too.
    cluster.apply(_another_agent("refund-agnet"))
    wait_for(
        lambda: (cluster.get(DEPLOY, "refund-agnet-worker") or {}).get("spec", {}).get("replicas") == 0,
        timeout=20,
        what="the agent that appeared drained",
    )
    wait_for(lambda: contained(cluster, "typo"), timeout=20, what="Contained once every agent is")
    assert _agent_missing(cluster, "typo")["status"] == "False"


def test_an_incident_naming_only_a_missing_agent_says_so_in_its_first_status(cluster: Cluster, operator):
    start_agent(cluster)
    cluster.apply([incident("ghost-only", agents=["ghost-agent"])])
    first = wait_for(lambda: cluster.status(AI, "ghost-only") or None, what="its first status")
    conditions = {c["type"]: c for c in first["conditions"]}
    assert conditions["AgentsMissing"]["status"] == "True", first
    assert "AgentDeployment ghost-agent not found" in conditions["AgentsMissing"]["message"]
    assert conditions["Accepted"]["status"] == "True" and first["phase"] == "Containing", first
    wait_for(lambda: [w for w in _warnings(cluster, "ghost-only") if "ghost-agent" in w], what="a Warning Event")


def test_contain_says_loudly_when_the_agent_is_gone_by_the_time_the_incident_exists(
    cluster: Cluster, operator, oncall_kubeconfig, monkeypatch
):
    from tourniquet import cli_incidents as cli_module

    start_agent(cluster)
    checked = cli_module._contain_problems

    async def check_then_lose_the_agent(*args, **kwargs):
        found = await checked(*args, **kwargs)
        cluster.delete(AD, "refund-agent")  # someone deletes it between contain's check and its create
        wait_for(lambda: cluster.get(AD, "refund-agent") is None, what="the agent gone (its finalizer run)")
        return found

    monkeypatch.setattr(cli_module, "_contain_problems", check_then_lose_the_agent)
    common = ["--kubeconfig", oncall_kubeconfig, "-n", cluster.namespace]
    result = CliRunner().invoke(cli, ["contain", "refund-agent", "--sev", "1", "--name", "gone", *common])
    assert result.exit_code == 1, result.output
    assert "AgentDeployment refund-agent not found" in result.output and "not contained" in result.output


def test_an_agent_taken_out_of_an_open_incident_is_released_by_it(cluster: Cluster, operator):
    start_agent(cluster)
    cluster.apply(_another_agent("notify-agent"))
    wait_for(lambda: cluster.status(AD, "notify-agent").get("bundle"), what="the second agent pinned")
    cluster.apply([incident("two", agents=["refund-agent", "notify-agent"], contain=["drain"])])
    wait_for(lambda: contained(cluster, "two"), what="both drained")

    cluster.patch(AI, "two", {"spec": {"agents": ["refund-agent"]}})
    status = wait_for(
        lambda: (
            cluster.status(AI, "two").get("observedGeneration") == 2
            and contained(cluster, "two")
            and cluster.status(AI, "two")
        ),
        what="the incident settled on refund-agent",
    )
    assert (cluster.get(DEPLOY, "notify-agent-worker") or {})["spec"]["replicas"] == 2  # released by this pass
    assert replicas(cluster) == 0
    released = [e for e in status["timeline"] if e["event"] == "LeverReleased"]
    assert [(e["agent"], e["message"].split(":")[0]) for e in released] == [("notify-agent", "drain")], released


@pytest.mark.emulator  # fault injection: the first pass is slowed to widen the window
def test_an_incident_edited_during_its_first_pass_keeps_the_times_that_pass_measured(cluster: Cluster, operator):
    start_agent(cluster)
    mark = cluster.mark()
    slow = cluster.fault("create", CM, status=None, delay=1.5, count=1)  # the evidence, inside the first pass
    cluster.apply([incident("edited", contain=["revokeTools", "drain"])])
    wait_for(lambda: slow.hits >= 1, what="the first pass capturing evidence")
    cluster.patch(AI, "edited", {"spec": {"summary": "refunds issued twice for one order"}})  # on-call adds a line
    final = wait_for(
        lambda: (
            cluster.status(AI, "edited").get("observedGeneration") == 2
            and contained(cluster, "edited")
            and cluster.status(AI, "edited")
        ),
        what="the edit observed, Contained",
    )
    first = next(
        w.body["status"] for w in cluster.writes(AI, since=mark) if w.path.endswith("/edited/status")
    )  # the first pass's: Contained, before the edit was seen
    assert first["observedGeneration"] == 1 and first["timings"]["containedSeconds"] > 0, first
    # What the first pass observed stays as it was measured: when it started, how long containment took, when
    # the incident was opened.
    assert final["timings"] == first["timings"], (first["timings"], final["timings"])
    assert final["timeline"][0] == first["timeline"][0], (first["timeline"], final["timeline"])
    assert [e["event"] for e in final["timeline"]].count("Contained") == 1, final["timeline"]
