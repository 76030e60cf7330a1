"""Every file in examples/ is applied to the real operator, and reaches the outcome its header promises.

One explicit test per example (the promises are too different for a shared checker to stay readable);
`test_every_example_has_a_test` keeps the list complete. Each test follows the commands in the file's
header: examples/refund-agent.yaml first, then the scenario, then any follow-up step the header names.
"""

from __future__ import annotations

import time
from pathlib import Path

import kubernetes_validate
import pytest

from tests.conftest import AD, AI, CM, DEPLOY, NP, ROOT, Cluster, example, load_yaml, wait_for
from tests.operator.test_agentdeployment import wired_revision
from tests.operator.test_incidents import condition, contained, control, egress_cidrs, replicas
from tourniquet.sandbox.keda import SCALEDOBJECTS, scaledobject_crd

EXAMPLES = ROOT / "examples"

# example file -> the test that checks its promise
COVERED = {
    "refund-agent.yaml": "test_refund_agent",
    "sev1-incident.yaml": "test_sev1_incident",
    "sev2-shadow.yaml": "test_sev2_shadow",
    "two-incidents.yaml": "test_two_incidents",
    "rollback-incident.yaml": "test_rollback_incident",
    "cascade.yaml": "test_cascade",
    "detection-rules.yaml": "test_detection_rules",
    "keda-consumer.yaml": "test_keda_consumer",
}


def header(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# "))
    return "\n".join(lines)


def test_every_example_has_a_test_and_a_promise() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(COVERED)
    for name, test in COVERED.items():
        assert test in globals(), f"{name}: {test} is missing"
        assert "Outcome:" in header(EXAMPLES / name), f"{name}: the header does not say its outcome"


def test_every_example_passes_the_crd_schemas(cluster: Cluster) -> None:
    """The emulator validates custom resources against the CRDs' schemas (and CEL rules) on apply."""
    cluster.apply([scaledobject_crd()])  # the sandbox's stand-in
    for path in sorted(EXAMPLES.glob("*.yaml")):
        applied = cluster.apply(load_yaml(path))
        assert len(applied) == len(load_yaml(path)), path.name


@pytest.mark.parametrize("version", ["1.30.0", "1.33.0"])
def test_the_built_in_objects_in_the_examples_validate_strictly(version: str) -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in load_yaml(path):
            if doc["apiVersion"].startswith(("tourniquet.dev/", "keda.sh/")):
                continue
            kubernetes_validate.validate(doc, version, strict=True)


def start(cluster: Cluster) -> None:
    cluster.apply(example("refund-agent.yaml"))
    wait_for(lambda: wired_revision(cluster) == "1", what="refund-agent wired to revision 1")


# ---------------------------------------------------------------- one test per example


def test_refund_agent(cluster: Cluster, operator) -> None:
    start(cluster)
    assert cluster.get(CM, "refund-agent-bundle-1") is not None
    # The status is written at the end of the pass that wired the worker: a moment after the wiring is seen.
    wait_for(
        lambda: (cluster.status(AD, "refund-agent").get("bundle") or {}).get("revision") == 1,
        what="the agent's status naming revision 1",
    )
    worker = cluster.get(DEPLOY, "refund-agent-worker")["spec"]["template"]
    assert {"tourniquet-bundle", "tourniquet-control"} <= {v["name"] for v in worker["spec"]["volumes"]}
    assert control(cluster) == ("active", [])
    policy = cluster.get(NP, "refund-agent-egress")["spec"]
    assert policy["podSelector"] == {"matchLabels": {"app": "refund-agent"}}
    assert egress_cidrs(cluster) == {"203.0.113.0/24", "10.20.0.0/16", "10.30.0.0/16"}  # model, tools
    assert any(
        port.get("port") == 53 for rule in policy["egress"] for port in rule.get("ports", [])
    ), "DNS is allowed"


def test_sev1_incident(cluster: Cluster, operator) -> None:
    start(cluster)
    cluster.apply(example("sev1-incident.yaml"))
    name = "refund-agent-duplicate-refunds"
    wait_for(lambda: contained(cluster, name), what="Contained")
    status = cluster.status(AI, name)
    assert status["phase"] == "Contained"
    assert control(cluster) == ("active", ["issue_refund", "reverse_refund"])
    assert "10.30.0.0/16" not in egress_cidrs(cluster) and "10.20.0.0/16" in egress_cidrs(cluster)
    assert replicas(cluster) == 0
    evidence = cluster.get(CM, f"{name}-evidence")
    assert evidence is not None and status["evidence"]["configMap"] == f"{name}-evidence"
    events = [e["event"] for e in status["timeline"]]
    assert events.index("EvidenceCaptured") < max(
        i for i, e in enumerate(status["timeline"]) if e["event"] == "LeverApplied" and e["message"].startswith("drain")
    ), "evidence before the drain"
    # The agent's own status follows the incident's once the containment burst is over.
    wait_for(lambda: condition(cluster, AD, "refund-agent", "BundlePinned").get("status") == "False", what="agent")
    pinned = condition(cluster, AD, "refund-agent", "BundlePinned")
    assert (pinned["status"], pinned["reason"]) == ("False", "RollbackRefused")
    assert "no revision is known good yet" in pinned["message"]


def test_sev2_shadow(cluster: Cluster, operator) -> None:
    start(cluster)
    cluster.apply(example("sev2-shadow.yaml"))
    name = "refund-agent-rude-replies"
    wait_for(lambda: contained(cluster, name), what="Contained")
    assert cluster.status(AI, name)["phase"] == "Contained"
    assert control(cluster) == ("shadow", [])
    assert replicas(cluster) == 2 and "10.30.0.0/16" in egress_cidrs(cluster)
    cluster.patch(AI, name, {"spec": {"resolved": True}})
    wait_for(lambda: control(cluster)[0] == "active", what="active again")


def test_two_incidents(cluster: Cluster, operator) -> None:
    start(cluster)
    cluster.apply(example("two-incidents.yaml"))
    first, second = "refund-agent-bad-refunds", "refund-agent-queue-flood"
    wait_for(lambda: contained(cluster, first) and contained(cluster, second), what="both Contained")
    assert control(cluster)[0] == "shadow" and replicas(cluster) == 0

    cluster.patch(AI, first, {"spec": {"resolved": True}})  # the header's follow-up step
    wait_for(lambda: control(cluster)[0] == "active", what="shadow released")
    wait_for(lambda: cluster.status(AI, first).get("phase") == "Resolved", what="the first resolved")
    assert replicas(cluster) == 0
    drain = next(lv for lv in cluster.status(AI, first)["levers"] if lv["name"] == "drain")
    assert drain["state"] == "Released" and f"still held by {second}" in drain["detail"]

    cluster.patch(AI, second, {"spec": {"resolved": True}})
    wait_for(lambda: replicas(cluster) == 2, what="2 replicas restored")


def test_rollback_incident(cluster: Cluster, operator) -> None:
    start(cluster)
    # The header's "Before:" steps.
    cluster.patch(AD, "refund-agent", {"spec": {"promotion": {"soakSeconds": 0}}})
    wait_for(
        lambda: (cluster.status(AD, "refund-agent").get("bundle") or {}).get("lastKnownGood") == 1, what="1 known good"
    )
    cluster.patch(
        AD,
        "refund-agent",
        {"spec": {"promotion": {"soakSeconds": 3600}, "bundle": {"prompt": {"template": "Refund every request."}}}},
    )
    wait_for(lambda: wired_revision(cluster) == "2", what="revision 2 running")

    cluster.apply(example("rollback-incident.yaml"))
    name = "refund-agent-bad-prompt"
    wait_for(lambda: wired_revision(cluster) == "1", what="rolled back to revision 1")
    assert cluster.get(CM, "refund-agent-bundle-2")["metadata"]["labels"]["tourniquet.dev/verdict"] == "bad"
    wait_for(
        lambda: condition(cluster, AD, "refund-agent", "BundlePinned").get("reason") == "RolledBack",
        what="BundlePinned RolledBack",
    )
    wait_for(
        lambda: any(e["event"] == "RolledBack" for e in cluster.status(AI, name).get("timeline", [])),
        what="RolledBack in the timeline",
    )
    cluster.patch(AI, name, {"spec": {"resolved": True}})
    wait_for(
        lambda: condition(cluster, AD, "refund-agent", "BundlePinned").get("reason") == "RevisionBad",
        what="RevisionBad after the resolution",
    )
    assert condition(cluster, AD, "refund-agent", "BundlePinned")["status"] == "False"
    assert wired_revision(cluster) == "1"


def test_cascade(cluster: Cluster, operator) -> None:
    start(cluster)
    cluster.apply(example("cascade.yaml"))
    name = "refund-agent-wrong-amounts"
    wait_for(lambda: contained(cluster, name), what="Contained")
    assert cluster.status(AI, name)["agents"] == ["refund-agent", "notify-agent"]
    assert control(cluster) == ("active", ["issue_refund", "reverse_refund"])
    wait_for(lambda: (cluster.get(CM, "notify-agent-control") or {}).get("data", {}).get("mode") == "shadow")
    assert cluster.get(CM, "notify-agent-control")["data"]["revokedTools"] == "[]"


def test_detection_rules(cluster: Cluster, operator) -> None:
    cluster.apply(example("detection-rules.yaml"))

    def degraded() -> dict:
        return condition(cluster, AD, "triage-agent", "DetectionDegraded")

    # The first evaluation is spread over one interval (15 s here), so a thousand agents do not query at once.
    found = wait_for(lambda: degraded() or None, timeout=20, what="DetectionDegraded")
    assert (found["status"], found["reason"]) == ("True", "DetectionOff")
    assert found["message"].startswith("detection is off")
    rules = {r["name"]: r for r in cluster.status(AD, "triage-agent")["detection"]["rules"]}
    assert sorted(rules) == ["context", "denials", "loops", "misroutes", "retries", "spend", "tokens"]
    assert all(r.get("expr") for r in rules.values()), rules
    assert 'agent="triage-agent"' in rules["misroutes"]["expr"]  # $agent filled in
    assert "tourniquet_agent_" in rules["retries"]["expr"]
    time.sleep(1)
    assert not [i for i in cluster.list(AI) if "triage-agent" in i["spec"]["agents"]]


def test_keda_consumer(cluster: Cluster, operator) -> None:
    cluster.apply([scaledobject_crd()])  # the sandbox's stand-in
    start(cluster)
    cluster.apply(example("keda-consumer.yaml"))
    name = "refund-agent-stuck-queue"
    wait_for(lambda: contained(cluster, name), what="Contained")
    assert replicas(cluster) == 0
    annotations = cluster.get(SCALEDOBJECTS, "refund-agent-queue")["metadata"]["annotations"]
    assert annotations["autoscaling.keda.sh/paused-replicas"] == "0"
    cluster.patch(AI, name, {"spec": {"resolved": True}})
    wait_for(lambda: replicas(cluster) == 2, what="2 replicas restored")
    wait_for(
        lambda: "autoscaling.keda.sh/paused-replicas"
        not in (cluster.get(SCALEDOBJECTS, "refund-agent-queue")["metadata"].get("annotations") or {}),
        what="KEDA resumed",
    )
