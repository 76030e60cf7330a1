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
- every pass goes through one keyed work queue (:mod:`tourniquet.reconcilers.queue`): a watch event only adds
  the incident's key; open incidents come back every ``reassert_seconds`` (drift repair), and a pass that
  failed is retried with a growing delay.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from tourniquet.adapters.kube import AGENTINCIDENTS, ApiError, KubeApi
from tourniquet.adapters.ledger import Ledgers
from tourniquet.domain.containment import IncidentView
from tourniquet.domain.detection import LABEL_SOURCE
from tourniquet.domain.names import PREFIX
from tourniquet.domain.undo import following
from tourniquet.reconcilers import agentincident
from tourniquet.reconcilers.agents import Agents
from tourniquet.reconcilers.queue import PassIncomplete, WorkQueue

log = logging.getLogger(__name__)

# Held by every open incident: deletion waits until what it held is released. Not Kopf's finalizer name:
# Kopf removes its own finalizer from objects none of its handlers need it on.
FINALIZER = f"{PREFIX}/release-levers"

Key = tuple[str, str]  # namespace, name


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


# How many incidents' passes run at once. A pass mostly waits on the API server, and a SEV1 must not wait for other
# incidents' passes: with 20, a burst of 100 incidents was contained in waves on the real API server (p99 2.7-3.1 s
# against 1.9-2.5 s with 100, the code before the work queue 1.5-3.8 s; bench_incidents.py, README "Performance").
PASSES_AT_ONCE = 100


def _behind(body: Mapping[str, Any]) -> bool:
    """Its spec changed since its status was written (or it has none yet)."""
    status = body.get("status") or {}
    return not status or status.get("observedGeneration") != body["metadata"].get("generation")


class IncidentDriver:
    """One per operator process. `views(namespace)` gives the namespace's incidents as the index holds them;
    `agents` contains and reconciles the agents; the driver defers work on their lane (`agents.lane`). `ledgers`:
    the operator's open ledgers, which the incidents' undo reads."""

    def __init__(
        self,
        api: KubeApi,
        views: Callable[[str], list[IncidentView]],
        agents: Agents,
        *,
        reassert_seconds: float,
        ledgers: Ledgers,
        concurrency: int = PASSES_AT_ONCE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.ledgers = ledgers
        self.views = views
        self.agents = agents
        self.reassert_seconds = reassert_seconds
        self.queue: WorkQueue[Key] = WorkQueue(self._work, name="AgentIncident", concurrency=concurrency, clock=clock)
        self._delivered: dict[Key, dict[str, Any]] = {}  # a new incident as its watch event delivered it
        self._gone: dict[Key, dict[str, Any]] = {}  # deleted before its finalizer was added: its last state
        self._notes: dict[Key, list[tuple[str, str, str | None]]] = {}  # for its next pass's timeline

    # -- watch events ---------------------------------------------------------------------------------------

    def on_event(self, kind: str | None, seen: Mapping[str, Any], *, copy: Callable[[], dict[str, Any]]) -> None:
        """One watch event (`kind` None: the initial listing, at start-up), decided on `seen` as delivered;
        `copy()` makes the plain copy a pass works on (most events, e.g. the echo of a status write, need
        none)."""
        key = _key(seen)
        meta = seen["metadata"]
        held = FINALIZER in (meta.get("finalizers") or [])
        if kind == "DELETED":
            if _is_open(seen) and not held:
                # Deleted before its finalizer was added: release from the last state seen.
                self._gone[key] = copy()
                self.queue.add(key)
            else:
                self.queue.forget(key)
        elif meta.get("deletionTimestamp"):
            if held:
                self.queue.add(key)
        elif _behind(seen) or (kind is None and _watched(seen)):
            if not seen.get("status"):
                self._delivered[key] = copy()
            self.queue.add(key)
        elif _watched(seen):
            self.queue.add(key, self.reassert_seconds)

    def note(self, namespace: str, name: str, notes: list[tuple[str, str, str | None]]) -> None:
        """Timeline entries for the incident's next pass (drift repaired, a rollback done by the agent's pass)."""
        self._notes.setdefault((namespace, name), []).extend(notes)
        self.queue.add((namespace, name))

    # -- passes ---------------------------------------------------------------------------------------------

    async def _work(self, key: Key) -> float | None:
        """One pass; when to come back (a re-assert), or None."""
        if key in self._gone:
            await self._release(self._gone[key])
            del self._gone[key]
            return None
        body = self._delivered.pop(key, None)
        # A new incident is worked on as delivered; otherwise read fresh, so a re-assert and a spec change
        # never compute the timeline from each other's stale copies.
        if body is None or body.get("status") or _opened_by_detection(body):
            body = await self.api.get_or_none(AGENTINCIDENTS, *key)
        if body is None:
            self.queue.forget(key)
            return None
        if body["metadata"].get("deletionTimestamp"):
            await self._release(body)
            return None
        notes = self._notes.pop(key, [])
        try:
            report = await agentincident.reconcile_incident(
                self.api, body, self.agents, notes=notes, others=self.views(key[0]), ledgers=self.ledgers
            )
        except BaseException:
            self._notes.setdefault(key, [])[:0] = notes  # said on the retry
            raise
        # An event delivered meanwhile without a status came before this pass's write: the next pass reads fresh.
        self._delivered.pop(key, None)
        if not report.accepted:
            log.warning("AgentIncident %s/%s refused: %s", *key, report.message)
        current = report.written or body
        if _is_open(body):
            # Off the burst: an incident deleted before this lands is released from its DELETED event.
            self.agents.lane.after_containment(lambda: self._add_finalizer_later(current))
        else:
            await self._keep_finalizer(current, wanted=False)
        if report.retry:  # written, but something could not be read (the ledger): retried with backoff
            raise PassIncomplete(report.retry)
        # Open, or resolved with its compensation Job under way (still read, to report how it ends): again.
        return self.reassert_seconds if _is_open(body) or report.following else None

    async def _release(self, body: dict[str, Any]) -> None:
        """Recompute its agents without it (a no-op if it held nothing), then let the deletion finish."""
        namespace, name = _key(body)
        await agentincident.release_deleted_incident(self.api, body, self.agents, others=self.views(namespace))
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

    async def run(self) -> None:
        """Re-assert open incidents and retry failed passes, until cancelled."""
        await self.queue.run()
