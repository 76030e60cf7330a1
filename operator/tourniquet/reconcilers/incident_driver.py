"""When an AgentIncident is reconciled: level-triggered, from its watch events and one re-assert loop.

Incidents are driven here rather than by Kopf's change handlers, which cost two round trips before the
first containment write (a finalizer patch, then waiting for its echo) and a progress patch after it.
Instead:

- every watch event is looked at: an incident is reconciled when it is new, its spec changed since its
  status was written (`status.observedGeneration`), the operator has just started (the initial listing),
  or it is being deleted;
- its finalizer (:data:`FINALIZER`) is added *after* its first status is written, once no containment
  pass is running (as Events are), so a burst of incidents carries no extra request; an incident
  deleted before that still releases, from its DELETED event. A resolved incident holds nothing, so
  its finalizer is removed;
- open incidents are re-asserted every ``reassert_seconds`` (drift repair) by one loop, and a pass
  that failed is retried with a growing delay by the same loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tourniquet.adapters.kube import AGENTINCIDENTS, ApiError, KubeApi
from tourniquet.domain.containment import IncidentView
from tourniquet.domain.detection import LABEL_SOURCE
from tourniquet.domain.names import PREFIX
from tourniquet.domain.undo import following
from tourniquet.reconcilers import agentincident
from tourniquet.reconcilers.lane import after_containment
from tourniquet.reconcilers.locks import lock_for

log = logging.getLogger(__name__)

# Held by every open incident: deletion waits until what it held is released. Not Kopf's finalizer name:
# Kopf removes its own finalizer from objects none of its handlers need it on.
FINALIZER = f"{PREFIX}/release-levers"
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0)  # after a failed pass; a non-transient error waits the longest

Key = tuple[str, str]  # namespace, name


class PassIncomplete(Exception):
    """A pass wrote what it observed but could not read everything (e.g. the ledger): retried with backoff."""


def _key(body: Mapping[str, Any]) -> Key:
    return body["metadata"]["namespace"], body["metadata"]["name"]


def _is_open(body: Mapping[str, Any]) -> bool:
    return not (body.get("spec") or {}).get("resolved", False)


def _opened_by_detection(body: Mapping[str, Any]) -> bool:
    """Detection writes an incident's first status (its Detected entry) before the first pass: read it."""
    return LABEL_SOURCE in (body["metadata"].get("labels") or {})


def _watched(body: Mapping[str, Any]) -> bool:
    """Open, or resolved with its compensation Job under way: passes go on."""
    return _is_open(body) or following(body.get("status") or {})


def _behind(body: Mapping[str, Any]) -> bool:
    """Its spec changed since its status was written (or it has none yet)."""
    status = body.get("status") or {}
    return not status or status.get("observedGeneration") != body["metadata"].get("generation")


@dataclass
class _Schedule:
    due: float  # time.monotonic() of the next pass
    failures: int = 0
    retry: Callable[[], Awaitable[None]] | None = None  # what failed, when it must be redone as it was


class IncidentDriver:
    """One per operator process. `views(namespace)` gives the namespace's incidents as the index holds them."""

    def __init__(
        self,
        api: KubeApi,
        views: Callable[[str], list[IncidentView]],
        *,
        reassert_seconds: float,
        concurrency: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.views = views
        self.reassert_seconds = reassert_seconds
        self.clock = clock
        self._schedule: dict[Key, _Schedule] = {}
        self._running: set[Key] = set()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- watch events ---------------------------------------------------------------------------------------

    async def on_event(
        self, kind: str | None, seen: Mapping[str, Any], *, copy: Callable[[], dict[str, Any]]
    ) -> None:
        """One watch event (`kind` None: the initial listing, at start-up), decided on `seen` as delivered;
        `copy()` makes the plain copy a pass works on (most events, e.g. the echo of a status write, need
        none). Never raises: a failed pass is logged and retried by the loop."""
        key = _key(seen)
        meta = seen["metadata"]
        held = FINALIZER in (meta.get("finalizers") or [])
        if kind == "DELETED":
            self._schedule.pop(key, None)
            if _is_open(seen) and not held:
                # Deleted before its finalizer was added: release from the last state seen.
                body = copy()
                await self._attempt(key, lambda: self._release(body))
        elif meta.get("deletionTimestamp"):
            self._schedule.pop(key, None)
            if held:
                body = copy()
                await self._attempt(key, lambda: self._release(body))
        elif _behind(seen) or (kind is None and _watched(seen)):
            body = copy()
            await self._attempt(key, lambda: self._reconcile(key, body))
        elif _watched(seen):
            self._schedule.setdefault(key, _Schedule(self.clock() + self.reassert_seconds))

    # -- passes ---------------------------------------------------------------------------------------------

    async def _attempt(self, key: Key, run: Callable[[], Awaitable[None]]) -> None:
        self._running.add(key)
        try:
            await run()
            schedule = self._schedule.get(key)
            if schedule is not None and schedule.retry is run:  # redone: from now on, re-asserts only
                schedule.retry, schedule.failures = None, 0
        except asyncio.CancelledError:
            raise
        except Exception as error:  # whatever failed, the loop retries it
            schedule = self._schedule.setdefault(key, _Schedule(0.0))
            transient = not isinstance(error, ApiError) or error.transient
            delay = RETRY_DELAYS[min(schedule.failures, len(RETRY_DELAYS) - 1)] if transient else RETRY_DELAYS[-1]
            schedule.failures += 1
            schedule.due = self.clock() + delay
            # A pass that wrote what it saw is redone from a fresh read, not from the body it started with.
            schedule.retry = None if isinstance(error, PassIncomplete) else run
            log.warning("AgentIncident %s/%s: pass failed, retrying in %gs: %s", *key, delay, error)
        finally:
            self._running.discard(key)

    async def _reconcile(self, key: Key, delivered: dict[str, Any] | None = None) -> None:
        """A pass from the body as delivered when it has no status yet (a new incident), else read fresh, so
        a re-assert and a spec change never compute the timeline from each other's stale copies."""
        namespace, name = key
        async with lock_for("AgentIncident", namespace, name):
            body = delivered
            if body is None or body.get("status") or _opened_by_detection(body):
                body = await self.api.get_or_none(AGENTINCIDENTS, namespace, name)
            if body is None:
                self._schedule.pop(key, None)
                return
            if body["metadata"].get("deletionTimestamp"):
                self._schedule.pop(key, None)
                await self._release_locked(body)
                return
            report = await agentincident.reconcile_incident(self.api, body, others=self.views(namespace))
            if not report.accepted:
                log.warning("AgentIncident %s/%s refused: %s", namespace, name, report.message)
            current = report.written or body
            if _is_open(body):
                # An incomplete pass keeps its failure count, so its retries back off.
                failures = (self._schedule.get(key) or _Schedule(0.0)).failures if report.retry else 0
                self._schedule[key] = _Schedule(self.clock() + self.reassert_seconds, failures)
                # Off the burst: an incident deleted before this lands is released from its DELETED event.
                after_containment(lambda: self._add_finalizer_later(current))
            else:
                if report.following:  # resolved, holding nothing, but its compensation is still read
                    self._schedule[key] = _Schedule(self.clock() + self.reassert_seconds)
                else:
                    self._schedule.pop(key, None)
                await self._keep_finalizer(current, wanted=False)
            if report.retry:  # written, but something could not be read (the ledger): the loop retries with backoff
                raise PassIncomplete(report.retry)

    async def _release(self, body: dict[str, Any]) -> None:
        namespace, name = _key(body)
        async with lock_for("AgentIncident", namespace, name):
            await self._release_locked(body)

    async def _release_locked(self, body: dict[str, Any]) -> None:
        """Recompute its agents without it (a no-op if it held nothing), then let the deletion finish."""
        namespace, name = _key(body)
        await agentincident.release_deleted_incident(self.api, body, others=self.views(namespace))
        log.info("Released the levers of deleted AgentIncident %s/%s", namespace, name)
        if body["metadata"].get("deletionTimestamp"):
            await self._keep_finalizer(body, wanted=False)

    async def _keep_finalizer(self, body: dict[str, Any], *, wanted: bool) -> None:
        """Add or remove FINALIZER, conditional on the version read: on a conflict a newer event is on its
        way, and its pass decides again."""
        meta = body["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if (FINALIZER in finalizers) == wanted:
            return
        finalizers = [*finalizers, FINALIZER] if wanted else [f for f in finalizers if f != FINALIZER]
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}}
        try:
            await self.api.patch(AGENTINCIDENTS, meta["namespace"], meta["name"], patch)
        except ApiError as error:
            if not (error.conflict or error.not_found):
                raise

    async def _add_finalizer_later(self, body: dict[str, Any]) -> None:
        try:
            await self._keep_finalizer(body, wanted=True)
        except ApiError as error:  # e.g. deleted meanwhile (422: no new finalizers on an object being deleted)
            log.info("AgentIncident %s/%s: finalizer not added: %s", *_key(body), error)

    # -- the loop -------------------------------------------------------------------------------------------

    async def run(self, tick: float = 0.5) -> None:
        """Re-assert open incidents and retry failed passes, until cancelled."""
        try:
            while True:
                await asyncio.sleep(tick)
                now = self.clock()
                for key, schedule in list(self._schedule.items()):
                    if schedule.due <= now and key not in self._running:
                        schedule.due = now + self.reassert_seconds  # a pass that fails reschedules sooner
                        self._running.add(key)
                        task = asyncio.create_task(self._in_slot(key, schedule.retry))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
        finally:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _in_slot(self, key: Key, retry: Callable[[], Awaitable[None]] | None) -> None:
        try:
            async with self._slots:
                await self._attempt(key, retry or (lambda: self._reconcile(key)))
        finally:
            self._running.discard(key)
