"""Events for timeline entries: posted after containment, never lost, never long delayed."""

from __future__ import annotations

import asyncio
from typing import Any

from tourniquet.reconcilers import events, lane


def incident_in(cluster: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tourniquet.dev/v1alpha1",
        "kind": "AgentIncident",
        "metadata": {"name": "inc-1", "namespace": cluster.namespace, "uid": "u-1"},
    }


ENTRY = {"event": "LeverApplied", "message": "drain: 2 → 0 replicas", "agent": "refund-agent"}


def _reasons(cluster: Any) -> list[str]:
    return [e.get("reason") for e in cluster.list("v1/events")]


async def _until(check: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_events_wait_for_the_running_containment_pass(kube: Any, cluster: Any) -> None:
    background = lane.Lane()
    async with background.containment_pass():
        events.post_events_later(kube, incident_in(cluster), [ENTRY], background)
        await asyncio.sleep(0.5)
        assert _reasons(cluster) == [], "no paperwork while containment is running"
    await _until(lambda: _reasons(cluster) == ["LeverApplied"])
    event = cluster.list("v1/events")[0]
    assert event["involvedObject"]["name"] == "inc-1"
    assert event["message"] == "refund-agent: drain: 2 → 0 replicas"


async def test_events_wait_for_a_quiet_moment_not_a_gap_between_passes(kube: Any, cluster: Any) -> None:
    background = lane.Lane()
    async with background.containment_pass():
        events.post_events_later(kube, incident_in(cluster), [ENTRY], background)
    for _ in range(4):  # a burst: passes that start a few milliseconds after others end
        await asyncio.sleep(lane.QUIET_SECONDS / 4)
        async with background.containment_pass():
            await asyncio.sleep(0.01)
    assert _reasons(cluster) == [], "no paperwork between the passes of a burst"
    await _until(lambda: _reasons(cluster) == ["LeverApplied"])


async def test_events_are_not_held_back_by_a_long_pass(kube: Any, cluster: Any) -> None:
    background = lane.Lane(event_defer_seconds=0.2)
    async with background.containment_pass():
        events.post_events_later(kube, incident_in(cluster), [ENTRY, {**ENTRY, "event": "Contained"}], background)
        await _until(lambda: sorted(_reasons(cluster)) == ["Contained", "LeverApplied"], timeout=3)
