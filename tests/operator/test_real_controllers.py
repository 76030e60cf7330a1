"""What Kubernetes' own controllers do with what Tourniquet writes: garbage collection by ownerReferences,
Deployments that really make ReplicaSets and Pods. Only the real control plane runs these controllers (Pods stay
Pending there: no scheduler, no kubelet — they are counted, not run)."""

from __future__ import annotations

import pytest

from tests.conftest import AD, AI, CM, DEPLOY, NP, Cluster, wait_for
from tests.operator.test_incidents import contained, incident, start_agent

pytestmark = pytest.mark.real

REPLICASETS = "apps/v1/replicasets"


def worker_pods(cluster: Cluster) -> list[dict]:
    return [p for p in cluster.pods("app=refund-agent") if not p["metadata"].get("deletionTimestamp")]


def drain_detail(cluster: Cluster, name: str) -> str:
    levers = {lv["name"]: lv for lv in cluster.status(AI, name).get("levers") or []}
    return str((levers.get("drain") or {}).get("detail", ""))


def test_a_drained_consumer_loses_its_pods_and_gets_them_back_on_release(cluster: Cluster, operator) -> None:
    start_agent(cluster)
    # Wiring rolls the pods to the bundle; with no kubelet none becomes ready, so the rollout keeps the old pods
    # and adds a surge pod: at least the 2 replicas are there.
    wait_for(lambda: len(worker_pods(cluster)) >= 2, timeout=30, what="the worker's pods")

    cluster.apply([incident("drained", contain=["drain"])])
    wait_for(lambda: contained(cluster, "drained"), what="Contained")
    wait_for(lambda: worker_pods(cluster) == [], timeout=30, what="the worker's pods gone")
    replica_sets = cluster.list(REPLICASETS)
    assert replica_sets and all(rs["spec"]["replicas"] == 0 for rs in replica_sets)
    # The re-assert pass counts what is really left, and says so.
    wait_for(lambda: "no pod left" in drain_detail(cluster, "drained"), timeout=15, what="'no pod left' observed")

    cluster.patch(AI, "drained", {"spec": {"resolved": True}})
    wait_for(lambda: len(worker_pods(cluster)) >= 2, timeout=30, what="the worker's pods back")
    assert cluster.get(DEPLOY, "refund-agent-worker")["spec"]["replicas"] == 2


def test_deleting_the_agent_garbage_collects_what_it_owns_and_unwires_the_consumer(cluster: Cluster, operator) -> None:
    start_agent(cluster)
    owned = [(CM, "refund-agent-bundle-1"), (CM, "refund-agent-control"), (NP, "refund-agent-egress")]
    for resource, name in owned:
        owner = cluster.get(resource, name)["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("AgentDeployment", "refund-agent", True)

    cluster.delete(AD, "refund-agent")
    wait_for(lambda: cluster.get(AD, "refund-agent") is None, timeout=15, what="the agent gone (its finalizer ran)")
    wait_for(
        lambda: all(cluster.get(resource, name) is None for resource, name in owned),
        timeout=30,
        what="what it owned garbage-collected",
    )
    template = cluster.get(DEPLOY, "refund-agent-worker")["spec"]["template"]
    volumes = {v["name"] for v in template["spec"].get("volumes") or []}
    assert not volumes & {"tourniquet-bundle", "tourniquet-control"}, "the consumer no longer mounts them"


def test_deleting_an_incident_removes_its_evidence(cluster: Cluster, operator) -> None:
    start_agent(cluster)
    cluster.apply([incident("recorded", contain=["shadow"])])
    wait_for(lambda: contained(cluster, "recorded"), what="Contained")
    evidence = cluster.status(AI, "recorded")["evidence"]["configMap"]
    assert cluster.get(CM, evidence)["metadata"]["ownerReferences"][0]["name"] == "recorded"

    cluster.patch(AI, "recorded", {"spec": {"resolved": True}})
    wait_for(lambda: cluster.status(AI, "recorded").get("phase") == "Resolved", what="Resolved")
    cluster.delete(AI, "recorded")
    wait_for(lambda: cluster.get(CM, evidence) is None, timeout=30, what="the evidence garbage-collected")
