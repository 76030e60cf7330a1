"""An agent's status from an incident pass waits for the burst to end, and nobody computes past it."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any

from tourniquet.reconcilers import agent_status, lane
from tourniquet.reconcilers.detection import write_detection_status
from tourniquet.reconcilers.locks import lock_for


class RecordingApi:
    """Stores one agent; records every status write."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.agent = {"metadata": {"name": "a", "namespace": "ns", "resourceVersion": "1"}, "status": status}
        self.writes: list[dict[str, Any]] = []

    async def get_or_none(self, resource: Any, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.agent)

    async def patch(self, resource: Any, namespace: str, name: str, body: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.writes.append(body["status"])
        self.agent["status"] = {**self.agent["status"], **body["status"]}
        self.agent["metadata"]["resourceVersion"] = str(int(self.agent["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(self.agent)


def test_only_the_latest_pending_status_is_written_once_the_burst_is_over():
    async def scenario() -> None:
        api = RecordingApi({"phase": "old"})
        async with lane.containment_pass():
            assert agent_status.write_status_later(api, api.agent, {"phase": "first"})  # type: ignore[arg-type]
            assert agent_status.write_status_later(api, api.agent, {"phase": "second"})  # type: ignore[arg-type]
            await asyncio.sleep(0.05)
            assert api.writes == []  # not while a containment pass runs
        await asyncio.sleep(lane.QUIET_SECONDS + 0.1)
        assert api.writes == [{"phase": "second"}]

    asyncio.run(scenario())


def test_a_status_back_to_what_is_stored_cancels_the_pending_one():
    async def scenario() -> None:
        api = RecordingApi({"phase": "old"})
        async with lane.containment_pass():
            agent_status.write_status_later(api, api.agent, {"phase": "new"})  # type: ignore[arg-type]
            assert not agent_status.write_status_later(api, api.agent, {"phase": "old"})  # type: ignore[arg-type]
        await asyncio.sleep(lane.QUIET_SECONDS + 0.1)
        assert api.writes == []

    asyncio.run(scenario())


def test_a_pending_status_is_written_before_detection_writes_its_own():
    async def scenario() -> None:
        api = RecordingApi({"conditions": [{"type": "Ready", "status": "True"}]})
        contained = {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Contained", "status": "True"}]}
        async with lane.containment_pass():
            async with lock_for("AgentDeployment", "ns", "a"):
                agent_status.write_status_later(api, api.agent, contained)  # type: ignore[arg-type]
            degraded = (False, "NoPrometheus", "no Prometheus configured")
            now = datetime(2026, 11, 22, tzinfo=UTC)
            await write_detection_status(api, "ns", "a", [], degraded, now, 1)  # type: ignore[arg-type]
        # The detection patch was computed from the agent with the pending status already written:
        # its condition list keeps Contained.
        assert api.writes[0] == contained
        kinds = [c["type"] for c in api.agent["status"]["conditions"]]
        assert "Contained" in kinds and "DetectionDegraded" in kinds, kinds
        await asyncio.sleep(lane.QUIET_SECONDS + 0.1)
        assert len(api.writes) == 2  # nothing written again after the burst

    asyncio.run(scenario())
