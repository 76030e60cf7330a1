"""The API writes of a SEV1 pass, exactly: the floor's (bench/bench_incidents.py), and no more.

The floor is what containing one incident needs written: the control ConfigMap and the NetworkPolicy (revoke
the tools), the evidence ConfigMap, the drain, and the incident's status saying Contained; then the paperwork:
the agent's status and one Event per timeline entry. Besides those the operator adds its release finalizer to
the incident, and writes the incident's status once more when it observes the drain finished (status is
observation; the agent's, written by its own reconcile once containment is quiet, already observes it).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from tests.conftest import AD, AI, Cluster, example, wait_for
from tests.operator.test_agentdeployment import wired_revision
from tests.operator.test_incidents import condition, contained, incident

TIMELINE = ["Opened", "LeverApplied", "LeverApplied", "EvidenceCaptured", "Contained"]


def agent_without_rollback() -> list[dict[str, Any]]:
    """The example agent, its SEV1 response without the rollback (no revision is known good yet: it would be
    refused, and say so), as the benchmark's agents: revoke the tools, capture evidence, drain."""
    docs = copy.deepcopy(example())
    agent = next(d for d in docs if d["kind"] == "AgentDeployment")
    agent["spec"]["response"]["SEV1"] = {"contain": ["revokeTools", "drain"]}
    return docs


def what(call: Any) -> str:
    """A write as "METHOD path", the namespace left out (the emulator's is default, the real one's a test's); an
    Event says what it is about and why."""
    written = f"{call.method} {re.sub(r'/namespaces/[^/]+/', '/namespaces/-/', call.path)}"
    if written.endswith("/events") and isinstance(call.body, dict):
        involved = call.body.get("involvedObject") or {}
        written += f" ({involved.get('kind')} {involved.get('name')}: {call.body.get('reason')})"
    return written


def drain_observed_done(cluster: Cluster) -> bool:
    levers = cluster.status(AI, "dup-refunds").get("levers") or []
    return any(lever["name"] == "drain" and "no pod left" in lever.get("detail", "") for lever in levers)


def events_of(cluster: Cluster) -> list[str]:
    return [e["reason"] for e in cluster.list("v1/events") if e["involvedObject"]["name"] == "dup-refunds"]


def test_a_sev1_pass_writes_the_floors_writes_and_no_more(cluster: Cluster, operator) -> None:
    # No pod ever runs (on the real server the quota refuses them): the drain's end is observed in one step.
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ResourceQuota",
                "metadata": {"name": "no-pods", "namespace": "default"},
                "spec": {"hard": {"pods": "0"}},
            },
            *agent_without_rollback(),
        ]
    )
    wait_for(
        lambda: (
            wired_revision(cluster) == "1" and condition(cluster, AD, "refund-agent", "Ready").get("status") == "True"
        ),
        what="agent wired and Ready",
    )
    # Kopf records what it handled after the handler returns: that write belongs to the agent's first pass.
    wait_for(
        lambda: (
            "tourniquet.dev/last-handled-configuration"
            in cluster.get(AD, "refund-agent")["metadata"].get("annotations", {})
        ),
        what="Kopf's record of the handled spec",
    )
    mark = cluster.mark()
    cluster.apply([incident("dup-refunds")])
    wait_for(lambda: contained(cluster, "dup-refunds"), what="Contained")
    wait_for(lambda: drain_observed_done(cluster), what="the drain observed finished")
    wait_for(lambda: sorted(events_of(cluster)) == sorted(TIMELINE), what="one Event per timeline entry")
    wait_for(
        lambda: "no pod left" in condition(cluster, AD, "refund-agent", "Contained").get("message", ""),
        what="the agent's status saying the drain finished",
    )
    wait_for(lambda: cluster.get(AI, "dup-refunds")["metadata"].get("finalizers"), what="the release finalizer")

    writes = [what(call) for call in cluster.writes(since=mark)]
    incident_status = "PATCH /apis/tourniquet.dev/v1alpha1/namespaces/-/agentincidents/dup-refunds/status"
    agent_status = "PATCH /apis/tourniquet.dev/v1alpha1/namespaces/-/agentdeployments/refund-agent/status"
    containment = [
        "PATCH /api/v1/namespaces/-/configmaps/refund-agent-control",
        "PATCH /apis/networking.k8s.io/v1/namespaces/-/networkpolicies/refund-agent-egress",
        "POST /api/v1/namespaces/-/configmaps",
        "PATCH /apis/apps/v1/namespaces/-/deployments/refund-agent-worker",
    ]
    paperwork = [
        agent_status,
        *[f"POST /api/v1/namespaces/-/events (AgentIncident dup-refunds: {reason})" for reason in TIMELINE],
        "PATCH /apis/tourniquet.dev/v1alpha1/namespaces/-/agentincidents/dup-refunds",  # the release finalizer
    ]
    drain_done = [incident_status]
    assert sorted(writes) == sorted([*containment, incident_status, *paperwork, *drain_done]), writes
    # Containment first: every lever's write, then the incident's status; the paperwork only after it.
    contained_at = writes.index(incident_status)
    assert sorted(writes[:contained_at]) == sorted(containment), writes
    # The evidence records the running bundle as the operator's watch holds it: its ConfigMap is not read again.
    assert cluster.requests_to("/configmaps/refund-agent-bundle-1", since=mark) == []
