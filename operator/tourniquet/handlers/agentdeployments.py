"""AgentDeployment handlers: every cause calls the same reconcile."""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

import kopf

from tourniquet.adapters.kube import AGENTINCIDENTS, ApiError
from tourniquet.domain.conditions import find_condition
from tourniquet.domain.containment import IncidentView, incident_view
from tourniquet.freshness import is_canary
from tourniquet.handlers.freshness import count_incident_event
from tourniquet.reconcilers import agentdeployment as reconciler
from tourniquet.reconcilers.agentincident import reconcile_agent_locked, reconcile_incident
from tourniquet.reconcilers.locks import lock_for

RESOURCE = ("tourniquet.dev", "v1alpha1", "agentdeployments")
# How often every agent is re-reconciled (drift repair, promotion). Read once, at import.
RESYNC_SECONDS = float(os.environ.get("TOURNIQUET_RESYNC_SECONDS", "300"))
# How a refused agent is reconciled again, until it is not refused: after 1, 2, 4, 8 s, then every 10 s.
REQUEUE_DELAYS = (1.0, 2.0, 4.0, 8.0, 10.0)


def plain(body: kopf.Body) -> dict[str, Any]:
    """A deep, mutable copy of Kopf's read-only body view."""
    result: dict[str, Any] = json.loads(json.dumps(dict(body)))
    return result


def incident_views(index: kopf.Index[str, IncidentView], namespace: str) -> list[IncidentView]:
    """The namespace's incidents from the operator's in-memory index (no API call on the hot path)."""
    return list(index.get(namespace, []))


@kopf.index("tourniquet.dev", "v1alpha1", "agentincidents")
async def incidents_by_namespace(body: kopf.Body, memo: Any, **_: Any) -> dict[str, IncidentView] | None:
    """Each incident's spec parsed once per generation (async: Kopf runs sync handlers in a thread pool); a view
    keeps only what containment reads, not the timeline, which every status write lengthens.

    Every event, the canary's too, is also counted for the watch-freshness probe here: one indexer per incident
    event, not two. The canary is not indexed."""
    count_incident_event(body, memo)
    if is_canary(body):
        return None
    view = incident_view(body)
    return {body["metadata"]["namespace"]: view} if view is not None else None


async def _reconcile(
    body: kopf.Body, memo: Any, logger: kopf.Logger, incidents_by_namespace: kopf.Index[str, IncidentView]
) -> None:
    meta = body["metadata"]
    try:
        views = incident_views(incidents_by_namespace, meta["namespace"])
        outcome = await reconcile_agent_locked(memo.api, meta["namespace"], meta["name"], views)
    except ApiError as error:
        delay = 1 if error.transient else 30
        raise kopf.TemporaryError(f"Kubernetes API: {error}", delay=delay) from error
    if outcome is None:
        return
    if not outcome.ready:
        logger.warning("Not ready: %s: %s", outcome.reason, outcome.message)
    if outcome.drift:
        await _record_drift(outcome, memo, views)


async def _record_drift(outcome: reconciler.AgentReport, memo: Any, views: list[IncidentView]) -> None:
    """A timer pass put a lever back: say so in the timeline of every incident holding it."""
    from tourniquet.models import Lever

    drained = outcome.levers.get(Lever.DRAIN)
    notes: list[tuple[str, str, str | None]] = [("DriftRepaired", m, outcome.agent) for m in outcome.drift]
    namespace = outcome.namespace
    for incident in drained.holders if drained else []:
        async with lock_for("AgentIncident", namespace, incident):
            fresh = await memo.api.get_or_none(AGENTINCIDENTS, namespace, incident)
            if fresh is not None:
                await reconcile_incident(memo.api, fresh, notes=notes, others=views)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def agent_changed(body: kopf.Body, memo: Any, logger: kopf.Logger, **kwargs: Any) -> None:
    await _reconcile(body, memo, logger, kwargs["incidents_by_namespace"])


@kopf.timer(*RESOURCE, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def agent_resync(body: kopf.Body, memo: Any, logger: kopf.Logger, **kwargs: Any) -> None:
    """Drift repair and promotion: the same reconcile, on a timer."""
    await _reconcile(body, memo, logger, kwargs["incidents_by_namespace"])


def _refused(status: kopf.Status, **_: Any) -> bool:
    ready = find_condition(list(status.get("conditions") or []), "Ready") or {}
    return ready.get("status") == "False" and ready.get("reason") == "InvalidSpec"


@kopf.daemon(*RESOURCE, id="requeue-refused", when=_refused, cancellation_timeout=1.0)
async def requeue_refused(
    body: kopf.Body, memo: Any, logger: kopf.Logger, stopped: kopf.DaemonStopped, **kwargs: Any
) -> None:
    """A refused agent may wait on what its spec does not hold: a consumer applied after it (GitOps applies in
    any order), or one another agent still wires. The same reconcile again, with backoff, for as long as it
    is refused (Kopf stops this daemon once its Ready condition says otherwise)."""
    for attempt in itertools.count():
        await stopped.wait(REQUEUE_DELAYS[min(attempt, len(REQUEUE_DELAYS) - 1)])
        if stopped:
            return
        try:
            await _reconcile(body, memo, logger, kwargs["incidents_by_namespace"])
        except kopf.TemporaryError as error:
            logger.warning("Could not reconcile the refused agent again: %s", error)


@kopf.on.delete(*RESOURCE)
async def agent_deleted(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Unwire the consumers, so their pods do not reference a bundle ConfigMap that is going away."""
    reconciler.forget_agent(body["metadata"]["namespace"], body["metadata"]["name"])
    try:
        await reconciler.unwire_agent_deployment(memo.api, plain(body))
    except ApiError as error:
        raise kopf.TemporaryError(f"Kubernetes API: {error}", delay=2 if error.transient else 30) from error
