"""The agents' passes, through one keyed work queue: one pass at a time per agent.

- A watch event (create, update, resume) only adds the agent's key; the pass reads the agent fresh.
- Every agent comes back after ``resync_seconds`` (drift repair, promotion); a refused one (InvalidSpec) after
  1, 2, 4, 8 s, then every 10 s, until it is not refused (a consumer applied after it, GitOps applies in any
  order); a failed pass with backoff (:func:`tourniquet.reconcilers.queue.retry_delay`).
- An incident's pass contains its agents itself (:meth:`Agents.contain`, the hot path), holding their keys, and
  asks for each agent's full pass (its status among the rest) once containment is quiet, as the Events are
  posted (:mod:`tourniquet.reconcilers.lane`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tourniquet.adapters.kube import AGENTDEPLOYMENTS, KubeApi
from tourniquet.domain.containment import IncidentView
from tourniquet.models import AgentDeploymentSpec
from tourniquet.reconcilers.agentdeployment import (
    AgentReport,
    ChildrenSeen,
    ParsedAgent,
    contain_agent,
    parse_agent,
    reconcile_agent,
    unseen,
)
from tourniquet.reconcilers.lane import PASS_DEFER_SECONDS, Lane
from tourniquet.reconcilers.queue import WorkQueue

log = logging.getLogger(__name__)

Key = tuple[str, str]  # namespace, name

REQUEUE_DELAYS = (1.0, 2.0, 4.0, 8.0, 10.0)  # a refused agent is reconciled again after these


class Agents:
    """`views(namespace)`: the namespace's incidents as the operator's index holds them. `seen`: the agents'
    own objects as the operator's watch holds them. `after(report)`: called after every full pass (the
    handlers note drift repaired and rollbacks done on the incidents they were done for). `lane`: the operator's
    background lane (its incidents' passes run on it too; a fresh one if not given)."""

    def __init__(
        self,
        api: KubeApi,
        views: Callable[[str], list[IncidentView]],
        *,
        seen: ChildrenSeen = unseen,
        after: Callable[[AgentReport], Awaitable[None]] | None = None,
        resync_seconds: float = 300.0,
        concurrency: int = 20,  # against 100 on the real server: faster for 100 new agents, slower for 1,000
        lane: Lane | None = None,
    ) -> None:
        self.api = api
        self.lane = lane or Lane()
        self.views = views
        self.seen = seen
        self.after = after
        self.resync_seconds = resync_seconds
        self.queue: WorkQueue[Key] = WorkQueue(self._work, name="AgentDeployment", concurrency=concurrency)
        self._refusals: dict[Key, int] = {}  # passes in a row that refused the agent
        self._passes = 0  # full passes finished, of every agent
        self._last_pass: dict[Key, int] = {}  # the agent's latest full pass: its number in that count

    def add(self, namespace: str, name: str) -> None:
        self.queue.add((namespace, name))

    def forget(self, namespace: str, name: str) -> None:
        self.queue.forget((namespace, name))
        self._refusals.pop((namespace, name), None)
        self._last_pass.pop((namespace, name), None)

    def mark(self) -> int:
        """Taken before reading agents for :meth:`contain`: a full pass of one of them finished after it may have
        changed what was read (its spec seen, its bundle pinned and rolled out), and the agent is read again."""
        return self._passes

    def _passed(self, key: Key) -> None:
        self._passes += 1
        self._last_pass[key] = self._passes

    async def _work(self, key: Key) -> float | None:
        report = await self._reconcile(key)
        if report is None:
            self.forget(*key)
            return None
        if self.after is not None:
            await self.after(report)
        if not report.ready and report.reason == "InvalidSpec":
            refusals = self._refusals[key] = self._refusals.get(key, 0) + 1
            return REQUEUE_DELAYS[min(refusals - 1, len(REQUEUE_DELAYS) - 1)]
        self._refusals.pop(key, None)
        return self.resync_seconds

    async def _reconcile(self, key: Key) -> AgentReport | None:
        body = await self._read(key)
        if body is None:
            return None
        try:
            return await reconcile_agent(self.api, body, self.views(key[0]), seen=self.seen)
        finally:
            self._passed(key)

    async def _read(self, key: Key) -> dict[str, Any] | None:
        body = await self.api.get_or_none(AGENTDEPLOYMENTS, *key)
        return None if body is None or body["metadata"].get("deletionTimestamp") else body

    async def reconcile(self, namespace: str, name: str) -> AgentReport | None:
        """The agent's full pass now (a drill, an evaluation Job that finished), waiting for it; None when the
        agent is gone or being deleted."""
        async with self.queue.holding((namespace, name)):
            report = await self._reconcile((namespace, name))
        if report is not None and self.after is not None:
            await self.after(report)
        return report

    async def contain(
        self,
        body: dict[str, Any],
        parsed: ParsedAgent,
        incidents: list[IncidentView],
        upstream: dict[str, AgentDeploymentSpec],
        seen: ChildrenSeen | None = None,
        *,
        read_after: int,
    ) -> AgentReport | None:
        """The agent's containment (an incident's pass), from `body` as the incident's pass read it after
        :meth:`mark` returned `read_after` (`parsed`: its spec, :func:`parse_agent`); read and parsed again when a
        full pass of the agent finished since. An agent whose
        spec its own pass has not seen yet (just created or changed) gets that pass in full, here: its bundle is
        pinned and wired before the evidence records what it runs."""
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        async with self.queue.holding(key):
            if self._last_pass.get(key, 0) > read_after:
                fresh = await self._read(key)
                if fresh is None:
                    return None
                body, parsed = fresh, parse_agent(fresh)
            meta = body["metadata"]
            if (body.get("status") or {}).get("observedGeneration") != meta.get("generation"):
                try:
                    report = await reconcile_agent(self.api, body, incidents, seen=seen or self.seen)
                finally:
                    self._passed(key)
                return report if report.spec is not None else None  # refused: it says why in its status
            return await contain_agent(self.api, body, parsed, incidents, upstream, seen=seen or self.seen)

    def reconcile_soon(self, namespace: str, name: str) -> None:
        """The agent's full pass once containment is quiet, at most PASS_DEFER_SECONDS later (asked again meanwhile:
        still one pass)."""

        async def add() -> None:
            self.add(namespace, name)

        self.lane.after_containment(add, at_most=PASS_DEFER_SECONDS)

    async def run(self) -> None:
        """Resyncs, requeues and retries, until cancelled."""
        await self.queue.run()
