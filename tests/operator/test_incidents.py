"""Containment with the real operator: ordered, observed, reversible, a union of open incidents."""

from __future__ import annotations

import copy
import json
import subprocess

import pytest

from tests.conftest import AD, AI, CM, DEPLOY, NP, Cluster, example, project_kubectl, wait_for
from tests.operator.test_agentdeployment import active_revision, wired_revision

REFUNDS_CIDR = "10.30.0.0/16"  # issue_refund and reverse_refund
LOOKUP_CIDR = "10.20.0.0/16"


def incident(name: str, severity: str = "SEV1", agents: list[str] | None = None, **spec) -> dict:
    return {
        "apiVersion": "tourniquet.dev/v1alpha1",
        "kind": "AgentIncident",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"agents": agents or ["refund-agent"], "severity": severity, "class": "tool-misuse", **spec},
    }


def start_agent(cluster: Cluster) -> None:
    """The example agent, wired and with its status written (the pass that wires it writes the status last)."""
    cluster.apply(example())
    wait_for(
        lambda: (
            wired_revision(cluster) == "1" and condition(cluster, AD, "refund-agent", "Ready").get("status") == "True"
        ),
        what="agent wired and Ready",
    )


def replicas(cluster: Cluster) -> int:
    return cluster.get(DEPLOY, "refund-agent-worker")["spec"]["replicas"]


def egress_cidrs(cluster: Cluster) -> set[str]:
    policy = cluster.get(NP, "refund-agent-egress")
    return {p["ipBlock"]["cidr"] for r in policy["spec"]["egress"] for p in r.get("to", []) if "ipBlock" in p}


def control(cluster: Cluster) -> tuple[str, list[str]]:
    data = cluster.get(CM, "refund-agent-control")["data"]
    return data["mode"], json.loads(data["revokedTools"])


def condition(cluster: Cluster, resource: str, name: str, type_: str) -> dict:
    return next((c for c in cluster.status(resource, name).get("conditions", []) if c["type"] == type_), {})


def contained(cluster: Cluster, name: str) -> bool:
    return condition(cluster, AI, name, "Contained").get("status") == "True"


def test_a_sev1_incident_revokes_captures_evidence_then_drains(cluster: Cluster, operator):
    start_agent(cluster)
    cluster.apply([incident("dup-refunds")])  # SEV1, the example's playbook: revokeTools + drain
    wait_for(lambda: contained(cluster, "dup-refunds"), what="Contained")

    assert replicas(cluster) == 0
    worker = cluster.get(DEPLOY, "refund-agent-worker")
    assert worker["metadata"]["annotations"]["tourniquet.dev/replicas-before-drain"] == "2"
    assert REFUNDS_CIDR not in egress_cidrs(cluster) and LOOKUP_CIDR in egress_cidrs(cluster)
    assert control(cluster) == ("active", ["issue_refund", "reverse_refund"])  # every write tool

    status = cluster.status(AI, "dup-refunds")
    events = [(e["event"], e.get("message", "").split(":")[0]) for e in status["timeline"]]
    revoke = events.index(("LeverApplied", "revokeTools"))
    evidence = next(i for i, e in enumerate(events) if e[0] == "EvidenceCaptured")
    drain = events.index(("LeverApplied", "drain"))
    assert revoke < evidence < drain, events
    levers = {lv["name"]: lv for lv in status["levers"]}
    assert levers["drain"]["state"] == "Applied" and "2 → 0 replicas" in levers["drain"]["detail"]
    assert "connections already open may survive" in levers["revokeTools"]["detail"]
    assert status["phase"] == "Contained" and status["timings"]["containedSeconds"] >= 0
    evidence_cm = cluster.get(CM, status["evidence"]["configMap"])
    assert evidence_cm["immutable"] is True and "refund-agent" in evidence_cm["data"]["agent.json"]
    # The agent's own status follows the incident's once the containment burst is over.
    wait_for(lambda: condition(cluster, AD, "refund-agent", "Contained").get("status") == "True", what="agent")

    # Every timeline entry is also a Kubernetes Event on the incident (kubectl describe shows them).
    def reasons() -> list[str]:
        return sorted(e["reason"] for e in cluster.list("v1/events") if e["involvedObject"]["name"] == "dup-refunds")

    expected = sorted(e["event"] for e in status["timeline"])
    wait_for(lambda: reasons() == expected, what=f"events {expected}")


def test_release_restores_exactly_and_a_second_incident_keeps_its_levers(cluster: Cluster, operator):
    start_agent(cluster)
    cluster.apply([incident("first", contain=["shadow", "drain"])])
    cluster.apply([incident("second", severity="SEV2", contain=["drain", "revokeTools"], revokeTools=["issue_refund"])])
    wait_for(lambda: contained(cluster, "first") and contained(cluster, "second"), what="both contained")
    assert control(cluster) == ("shadow", ["issue_refund"]) and replicas(cluster) == 0

    cluster.patch(AI, "first", {"spec": {"resolved": True}})
    wait_for(lambda: control(cluster)[0] == "active", what="shadow released")
    assert replicas(cluster) == 0, "the second incident still holds drain"
    assert control(cluster) == ("active", ["issue_refund"])
    wait_for(lambda: cluster.status(AI, "first").get("phase") == "Resolved", what="first resolved")
    released = {lv["name"]: lv for lv in cluster.status(AI, "first")["levers"]}
    assert released["drain"]["state"] == "Released" and "still held by second" in released["drain"]["detail"]
    revoked = {lv["name"]: lv for lv in cluster.status(AI, "second")["levers"]}["revokeTools"]
    assert "10.30.0.0/16 stays open for reverse_refund" in revoked["detail"]  # said plainly, not over-claimed

    cluster.patch(AI, "second", {"spec": {"resolved": True}})
    wait_for(lambda: replicas(cluster) == 2, what="replicas restored")
    assert control(cluster) == ("active", [])
    assert REFUNDS_CIDR in egress_cidrs(cluster)
    annotations = cluster.get(DEPLOY, "refund-agent-worker")["metadata"].get("annotations") or {}
    assert "tourniquet.dev/replicas-before-drain" not in annotations


def test_drift_is_repaired_and_recorded(cluster: Cluster, operator):
    start_agent(cluster)
    cluster.apply([incident("drift", contain=["drain"])])
    wait_for(lambda: contained(cluster, "drift"), what="Contained")
    cluster.patch(DEPLOY, "refund-agent-worker", {"spec": {"replicas": 5}})
    wait_for(lambda: replicas(cluster) == 0, timeout=10, what="scaled back to 0")
    wait_for(
        lambda: any(e["event"] == "DriftRepaired" for e in cluster.status(AI, "drift")["timeline"]),
        what="DriftRepaired in the timeline",
    )
    entry = next(e for e in cluster.status(AI, "drift")["timeline"] if e["event"] == "DriftRepaired")
    assert "was scaled to 5" in entry["message"]
    # The value release restores is the one from before the incident, not the drift.
    cluster.patch(AI, "drift", {"spec": {"resolved": True}})
    wait_for(lambda: replicas(cluster) == 2, what="restored to 2")


def test_drift_names_who_scaled_the_consumer(cluster: Cluster, operator, kubeconfig: str):
    start_agent(cluster)
    cluster.apply([incident("who", contain=["drain"])])
    wait_for(lambda: contained(cluster, "who"), what="Contained")
    # A person scales the drained consumer back up with kubectl (a write to its /scale subresource).
    person = str(cluster.plane.admin_kubeconfig) if cluster.backend == "real" else kubeconfig
    scale = ("scale", "deployment/refund-agent-worker", "--replicas=3")
    scaled = subprocess.run(
        [project_kubectl(), f"--kubeconfig={person}", "-n", cluster.namespace, *scale],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert scaled.returncode == 0, scaled.stderr
    entry = wait_for(
        lambda: next((e for e in cluster.status(AI, "who")["timeline"] if e["event"] == "DriftRepaired"), None),
        what="DriftRepaired in the timeline",
    )
    assert entry["message"] == (
        "Deployment refund-agent-worker was scaled to 3 by kubectl during the incident; returned it to 0"
    )
    assert replicas(cluster) == 0


@pytest.mark.emulator  # fault injection
def test_restarts_during_containment_and_release_lose_nothing(cluster: Cluster, operator):
    start_agent(cluster)
    # Stop the operator while the drain is in flight.
    slow = cluster.fault("patch", DEPLOY, status=None, delay=30, count=1)
    cluster.apply([incident("restart", contain=["shadow", "drain"])])
    wait_for(lambda: slow.hits >= 1, what="drain under way")
    operator.stop()
    operator.start()
    wait_for(lambda: contained(cluster, "restart"), timeout=15, what="Contained after restart")
    assert replicas(cluster) == 0
    assert (
        cluster.get(DEPLOY, "refund-agent-worker")["metadata"]["annotations"]["tourniquet.dev/replicas-before-drain"]
        == "2"
    )
    # Stop again with the operator down while on-call resolves; the restart releases exactly.
    operator.stop()
    cluster.patch(AI, "restart", {"spec": {"resolved": True}})
    operator.start()
    wait_for(lambda: replicas(cluster) == 2 and control(cluster)[0] == "active", timeout=15, what="released")


def test_bad_incidents_touch_nothing(cluster: Cluster, operator):
    start_agent(cluster)
    before = (
        cluster.get(DEPLOY, "refund-agent-worker"),
        cluster.get(CM, "refund-agent-control"),
        egress_cidrs(cluster),
    )
    cluster.apply([incident("teleport", contain=["revokeTools"], revokeTools=["teleport"])])
    for name, words in (("teleport", "has no tool 'teleport'"),):
        accepted = wait_for(lambda n=name: condition(cluster, AI, n, "Accepted") or None, what=f"{name} Accepted")
        assert accepted["status"] == "False" and accepted["reason"] == "InvalidSpec"
        assert words in accepted["message"]
        assert cluster.status(AI, name)["phase"] == "Invalid"
    import time

    time.sleep(1.5)  # a resync pass of the agent must not act on them either
    assert (cluster.get(DEPLOY, "refund-agent-worker")["spec"], cluster.get(CM, "refund-agent-control")["data"]) == (
        before[0]["spec"],
        before[1]["data"],
    )
    assert egress_cidrs(cluster) == before[2]


def test_an_agent_without_consumers_cannot_be_drained(cluster: Cluster, operator):
    docs = example()
    agent = copy.deepcopy(docs[1])
    agent["spec"]["consumers"] = []
    cluster.apply([agent])
    wait_for(lambda: active_revision(cluster) == 1, what="agent pinned")
    cluster.apply([incident("no-consumers", contain=["drain"])])
    accepted = wait_for(lambda: condition(cluster, AI, "no-consumers", "Accepted") or None, what="Accepted")
    assert accepted["status"] == "False" and "has no consumers to drain" in accepted["message"]


def test_the_bundle_is_frozen_while_an_incident_is_open_unless_it_is_the_fix(cluster: Cluster, operator):
    start_agent(cluster)
    cluster.apply([incident("freeze", severity="SEV2", contain=["shadow"])])
    wait_for(lambda: contained(cluster, "freeze"), what="Contained")
    docs = example()
    docs[1]["spec"]["bundle"]["prompt"]["template"] = "A hasty fix."
    cluster.apply(docs)
    # Frozen since the incident opened; the message then names the revision held back.
    frozen = wait_for(
        lambda: (
            "revision 2" in condition(cluster, AD, "refund-agent", "BundleFrozen").get("message", "")
            and condition(cluster, AD, "refund-agent", "BundleFrozen")
        ),
        what="BundleFrozen naming revision 2",
    )
    assert frozen["status"] == "True" and "revision 2 is pinned but not rolled out" in frozen["message"]
    assert wired_revision(cluster) == "1" and cluster.get(CM, "refund-agent-bundle-2") is not None

    cluster.patch(AI, "freeze", {"spec": {"fix": {"revision": 2}}})
    wait_for(lambda: wired_revision(cluster) == "2", what="the fix rolls out")


def test_an_incident_rolls_back_to_last_known_good_and_marks_the_culprit_bad(cluster: Cluster, operator):
    start_agent(cluster)
    cluster.patch(CM, "refund-agent-bundle-1", {"metadata": {"labels": {"tourniquet.dev/verdict": "good"}}})
    docs = example()
    docs[1]["spec"]["bundle"]["prompt"]["template"] = "A risky prompt."
    cluster.apply(docs)
    wait_for(lambda: wired_revision(cluster) == "2", what="revision 2")

    cluster.apply([incident("culprit", contain=["shadow"], rollback={"to": "lastKnownGood"})])
    wait_for(lambda: wired_revision(cluster) == "1", what="rolled back to 1")
    labels = cluster.get(CM, "refund-agent-bundle-2")["metadata"]["labels"]
    assert labels["tourniquet.dev/verdict"] == "bad"
    wait_for(
        lambda: any(e["event"] == "RolledBack" for e in cluster.status(AI, "culprit").get("timeline", [])),
        what="RolledBack in the timeline",
    )
    # Resolved, the bad revision does not come back by itself.
    cluster.patch(AI, "culprit", {"spec": {"resolved": True}})
    reason = wait_for(
        lambda: condition(cluster, AD, "refund-agent", "BundlePinned").get("reason") == "RevisionBad",
        what="RevisionBad",
    )
    assert reason and wired_revision(cluster) == "1"


def test_cascade_contains_dependents_in_the_same_incident(cluster: Cluster, operator):
    start_agent(cluster)
    docs = example()
    downstream = copy.deepcopy(docs[1])
    downstream["metadata"]["name"] = "notify-agent"
    downstream["spec"]["consumers"] = []
    downstream["spec"]["dependsOn"] = [{"name": "refund-agent"}]
    cluster.apply([downstream])
    wait_for(lambda: cluster.get(CM, "notify-agent-control"), what="downstream control")
    cluster.apply([incident("cascade", contain=["revokeTools"], cascade=True)])
    wait_for(lambda: cluster.get(CM, "notify-agent-control")["data"]["mode"] == "shadow", what="downstream shadowed")
    wait_for(lambda: contained(cluster, "cascade"), what="Contained")
    status = cluster.status(AI, "cascade")
    assert status["agents"] == ["refund-agent", "notify-agent"]
    assert {(lv["agent"], lv["name"]) for lv in status["levers"]} >= {
        ("refund-agent", "revokeTools"),
        ("notify-agent", "shadow"),
    }


def test_deleting_an_open_incident_releases_through_its_finalizer(cluster: Cluster, operator):
    start_agent(cluster)
    cluster.apply([incident("delete-me", contain=["drain"])])
    wait_for(lambda: contained(cluster, "delete-me"), what="Contained")
    wait_for(lambda: "tourniquet.dev/release-levers" in _finalizers(cluster, "delete-me"), what="the finalizer")
    cluster.delete(AI, "delete-me")
    wait_for(lambda: cluster.get(AI, "delete-me") is None, what="deleted")
    wait_for(lambda: replicas(cluster) == 2, what="released")


def _finalizers(cluster: Cluster, name: str) -> list[str]:
    return (cluster.get(AI, name) or {}).get("metadata", {}).get("finalizers") or []


def test_on_the_way_to_contained_the_only_write_to_the_incident_is_its_status(cluster: Cluster, operator):
    start_agent(cluster)
    mark = cluster.mark()
    cluster.apply([incident("quick", contain=["drain"])])
    wait_for(lambda: contained(cluster, "quick"), what="Contained")
    wait_for(lambda: "tourniquet.dev/release-levers" in _finalizers(cluster, "quick"), what="the finalizer")
    writes = [r.split(" ")[0] + " " + r.split("/quick")[-1] for r in cluster.requests_to("/agentincidents/quick", mark)]
    writes = [w for w in writes if not w.startswith("GET")]
    # No finalizer round trip and no progress annotation first: the status saying Contained, then the finalizer.
    assert writes == ["PATCH /status", "PATCH "], writes


def test_the_agents_status_follows_the_incidents_and_says_contained(cluster: Cluster, operator):
    start_agent(cluster)
    # A real API server logs a request (its audit entry) just after answering it: the agent's first status write is
    # in the log before the requests this test counts start.
    wait_for(lambda: cluster.requests_to("/agentdeployments/refund-agent/status"), what="the first status write logged")
    mark = cluster.mark()
    cluster.apply([incident("quick", contain=["drain"])])
    wait_for(lambda: condition(cluster, AD, "refund-agent", "Contained").get("status") == "True", what="agent")
    assert contained(cluster, "quick")
    status_writes = [r.split(" ")[1] for r in cluster.requests_to("/status", mark) if r.startswith("PATCH")]
    # The incident reports first; the agent's status (one write) follows once the burst is over.
    assert [w.rsplit("/", 2)[-2] for w in status_writes] == ["quick", "refund-agent"], status_writes
    assert cluster.status(AD, "refund-agent")["containment"]["incidents"] == ["quick"]


@pytest.mark.emulator  # fault injection
def test_an_incident_deleted_before_its_finalizer_was_added_still_releases(cluster: Cluster, operator):
    start_agent(cluster)
    cluster.fault("patch", AI, subresource="", count=None)  # its finalizer can never be added
    cluster.apply([incident("brief", contain=["drain"])])
    wait_for(lambda: contained(cluster, "brief"), what="Contained")
    assert replicas(cluster) == 0 and _finalizers(cluster, "brief") == []
    cluster.delete(AI, "brief")
    wait_for(lambda: replicas(cluster) == 2, what="released on its DELETED event")


def test_with_the_finalizer_removed_by_hand_while_the_operator_is_down_the_restart_releases(cluster: Cluster, operator):
    start_agent(cluster)
    cluster.apply([incident("stuck", contain=["shadow", "drain"])])
    wait_for(lambda: contained(cluster, "stuck"), what="Contained")
    wait_for(lambda: _finalizers(cluster, "stuck") == ["tourniquet.dev/release-levers"], what="the finalizer")
    operator.stop()
    cluster.delete(AI, "stuck")
    assert cluster.get(AI, "stuck")["metadata"]["deletionTimestamp"], "held by its finalizer"
    cluster.patch(AI, "stuck", {"metadata": {"finalizers": None}})  # the documented escape hatch
    assert cluster.get(AI, "stuck") is None
    operator.start()
    wait_for(lambda: replicas(cluster) == 2 and control(cluster)[0] == "active", timeout=15, what="released")


@pytest.mark.emulator  # fault injection
def test_a_failed_incident_pass_is_retried(cluster: Cluster, operator):
    start_agent(cluster)
    fault = cluster.fault("patch", AI, status=500, count=2, subresource="status")
    cluster.apply([incident("flaky", contain=["drain"])])
    wait_for(lambda: contained(cluster, "flaky"), timeout=15, what="Contained after two failed status writes")
    assert fault.hits == 2


def test_a_resolved_incident_holds_nothing_and_loses_its_finalizer(cluster: Cluster, operator):
    start_agent(cluster)
    cluster.apply([incident("done", contain=["drain"])])
    wait_for(lambda: _finalizers(cluster, "done") == ["tourniquet.dev/release-levers"], what="the finalizer")
    cluster.patch(AI, "done", {"spec": {"resolved": True}})
    wait_for(lambda: replicas(cluster) == 2, what="released")
    wait_for(lambda: _finalizers(cluster, "done") == [], what="the finalizer removed")
    cluster.delete(AI, "done")
    assert cluster.get(AI, "done") is None, "deleting a resolved incident never waits for the operator"


def test_on_call_contains_and_releases_from_the_cli(cluster: Cluster, operator, oncall_kubeconfig):
    from click.testing import CliRunner

    from tourniquet.cli import main as cli

    start_agent(cluster)
    common = ["--kubeconfig", oncall_kubeconfig, "-n", cluster.namespace]
    result = CliRunner().invoke(
        cli, ["contain", "refund-agent", "--sev", "2", "--levers", "shadow,drain", "--name", "oncall", *common]
    )
    assert result.exit_code == 0, result.output
    assert "phase: Contained" in result.output and "refund-agent/drain: Applied" in result.output
    assert replicas(cluster) == 0 and control(cluster)[0] == "shadow"

    status = CliRunner().invoke(cli, ["status", *common])
    assert status.exit_code == 0, status.output
    assert "refund-agent" in status.output and "oncall" in status.output and "drain:Applied" in status.output

    refused = CliRunner().invoke(cli, ["contain", "refund-agent", "--sev", "1", "--levers", "freeze", *common])
    assert refused.exit_code == 1 and "unknown lever freeze" in refused.output

    released = CliRunner().invoke(cli, ["release", "oncall", *common])
    assert released.exit_code == 0, released.output
    assert "phase: Resolved" in released.output
    assert replicas(cluster) == 2 and control(cluster)[0] == "active"


KEDA_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "scaledobjects.keda.sh"},
    "spec": {
        "group": "keda.sh",
        "names": {"kind": "ScaledObject", "plural": "scaledobjects", "singular": "scaledobject"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }
        ],
    },
}


def test_a_keda_scaled_consumer_is_paused_during_the_drain_and_resumed_after(cluster: Cluster, operator):
    cluster.apply([KEDA_CRD])
    start_agent(cluster)
    cluster.apply(
        [
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": {"name": "refund-queue", "namespace": "default"},
                "spec": {"scaleTargetRef": {"name": "refund-agent-worker"}, "minReplicaCount": 1},
            }
        ]
    )
    cluster.apply([incident("keda", contain=["drain"])])
    wait_for(lambda: contained(cluster, "keda"), what="Contained")
    annotations = cluster.get("keda.sh/v1alpha1/scaledobjects", "refund-queue")["metadata"]["annotations"]
    assert annotations["autoscaling.keda.sh/paused-replicas"] == "0"
    cluster.patch(AI, "keda", {"spec": {"resolved": True}})
    wait_for(lambda: replicas(cluster) == 2, what="restored")
    wait_for(
        lambda: (
            "autoscaling.keda.sh/paused-replicas"
            not in (cluster.get("keda.sh/v1alpha1/scaledobjects", "refund-queue")["metadata"].get("annotations") or {})
        ),
        what="KEDA resumed",
    )


def test_re_assert_passes_add_nothing_to_the_timeline_of_a_contained_incident(cluster: Cluster, operator):
    start_agent(cluster)
    cluster.apply([incident("steady")])  # SEV1 playbook: revoke, drain, and a rollback that is refused (no LKG)
    wait_for(lambda: contained(cluster, "steady"), what="Contained")
    import time

    first = cluster.status(AI, "steady")["timeline"]
    events = [(e["event"], e.get("agent"), e.get("message", "").split(":")[0]) for e in first]
    assert len(events) == len(set(events)), events  # each lever applied once, the refusal said once
    assert any(e["event"] == "Failed" and "rollback" in e["message"] for e in first)
    time.sleep(3)  # three re-assert passes (every second in tests)
    assert cluster.status(AI, "steady")["timeline"] == first


def _bundle_lists(cluster: Cluster, since: int) -> list[str]:
    return [
        r
        for r in cluster.requests_to("/namespaces/default/configmaps", since=since)
        if r.startswith("GET ") and r.endswith("/configmaps")
    ]


def test_an_incident_pass_reuses_the_bundle_revisions_this_operator_last_saw(cluster: Cluster, operator):
    start_agent(cluster)
    wait_for(lambda: cluster.status(AD, "refund-agent").get("bundle", {}).get("revision") == 1, what="status")
    mark = cluster.mark()
    cluster.apply([incident("fast")])
    wait_for(lambda: contained(cluster, "fast"), what="Contained")
    assert _bundle_lists(cluster, mark) == [], "the namespace's ConfigMaps are not scanned on the way to Contained"


def test_the_drain_detail_counts_the_pods_from_the_pass_after_the_scale_down(cluster: Cluster, operator):
    start_agent(cluster)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "refund-agent-worker-1", "namespace": "default", "labels": {"app": "refund-agent"}},
        "spec": {"containers": [{"name": "worker", "image": "ghcr.io/example/refund-agent:1.4.2"}]},
    }
    cluster.apply([pod])
    cluster.patch("v1/pods", "refund-agent-worker-1", {"status": {"phase": "Running"}}, subresource="status")
    cluster.apply([incident("pods", contain=["drain"])])
    wait_for(lambda: contained(cluster, "pods"), what="Contained")

    def drain_detail() -> str:
        return next(lv["detail"] for lv in cluster.status(AI, "pods")["levers"] if lv["name"] == "drain")

    # The pass that scaled the worker down does not count pods that are only starting to stop.
    assert drain_detail() == "refund-agent-worker 2 → 0 replicas, scaled down just now"
    wait_for(lambda: drain_detail().endswith("1 pod(s) still terminating"), what="counted by the re-assert")
    cluster.delete("v1/pods", "refund-agent-worker-1")
    wait_for(lambda: drain_detail().endswith("no pod left"), what="no pod left")


def test_an_incident_pass_writes_the_control_configmap_and_policy_without_reading_them_first(
    cluster: Cluster, operator
):
    start_agent(cluster)
    mark = cluster.mark()
    cluster.apply([incident("no-reads", contain=["revokeTools"])])
    wait_for(lambda: contained(cluster, "no-reads"), what="Contained")
    for path in ("/configmaps/refund-agent-control", "/networkpolicies/refund-agent-egress"):
        calls = [r.split(" ")[0] for r in cluster.requests_to(path, mark)]
        # The write carries the version of the copy the agent's last pass got back, so it needs no read.
        assert calls[:1] == ["PATCH"] and "GET" not in calls[: calls.index("PATCH") + 1], (path, calls)
    assert control(cluster) == ("active", ["issue_refund", "reverse_refund"])
    assert REFUNDS_CIDR not in egress_cidrs(cluster)


def test_children_changed_by_hand_since_the_last_pass_are_set_right(cluster: Cluster, operator):
    start_agent(cluster)
    cluster.patch(CM, "refund-agent-control", {"data": {"mode": "shadow", "note": "set by hand"}})
    policy = cluster.get(NP, "refund-agent-egress")
    cluster.patch(NP, "refund-agent-egress", {"spec": {"egress": policy["spec"]["egress"][:1]}})
    cluster.apply([incident("after-hand-edits", contain=["revokeTools"])])
    wait_for(lambda: contained(cluster, "after-hand-edits"), what="Contained")
    assert control(cluster) == ("active", ["issue_refund", "reverse_refund"])
    assert cluster.get(NP, "refund-agent-egress")["spec"]["egress"] != policy["spec"]["egress"][:1]
    assert LOOKUP_CIDR in egress_cidrs(cluster) and REFUNDS_CIDR not in egress_cidrs(cluster)
