"""AgentIncident handlers: every cause calls the same reconcile; deletion releases through a finalizer."""

from __future__ import annotations

import os
from typing import Any

import kopf

from tourniquet.adapters.kube import AGENTINCIDENTS, ApiError
from tourniquet.domain.containment import IncidentView
from tourniquet.handlers.agentdeployments import incident_views, plain
from tourniquet.handlers.freshness import NOT_CANARY
from tourniquet.reconcilers import agentincident as reconciler
from tourniquet.reconcilers.locks import lock_for

RESOURCE = ("tourniquet.dev", "v1alpha1", "agentincidents")
# Drift repair: how often an open incident's levers are re-asserted. Read once, at import.
REASSERT_SECONDS = float(os.environ.get("TOURNIQUET_REASSERT_SECONDS", "10"))


def _is_open(spec: kopf.Spec, **_: Any) -> bool:
    return not spec.get("resolved", False)


async def _reconcile(body: kopf.Body, memo: Any, logger: kopf.Logger, index: kopf.Index[str, IncidentView]) -> None:
    meta = body["metadata"]
    try:
        async with lock_for("AgentIncident", meta["namespace"], meta["name"]):
            # A brand-new incident (no status yet) is as Kopf delivered it; later passes read it fresh, so a
            # timer and a change handler never compute the timeline from each other's stale copies.
            if not body.get("status"):
                fresh: dict[str, Any] | None = plain(body)
            else:
                fresh = await memo.api.get_or_none(AGENTINCIDENTS, meta["namespace"], meta["name"])
            if fresh is None:
                return
            others = incident_views(index, meta["namespace"])
            report = await reconciler.reconcile_incident(memo.api, fresh, others=others)
    except ApiError as error:
        raise kopf.TemporaryError(f"Kubernetes API: {error}", delay=1 if error.transient else 15) from error
    if not report.accepted:
        logger.warning("Refused: %s", report.message)
    elif report.status:
        phase = report.status.get("phase")
        logger.info("Reconciled incident: phase %s", phase)


@kopf.on.resume(*RESOURCE, labels=NOT_CANARY)
@kopf.on.create(*RESOURCE, labels=NOT_CANARY)
@kopf.on.update(*RESOURCE, field="spec", labels=NOT_CANARY)
async def incident_changed(body: kopf.Body, memo: Any, logger: kopf.Logger, **kwargs: Any) -> None:
    await _reconcile(body, memo, logger, kwargs["incidents_by_namespace"])


@kopf.timer(*RESOURCE, interval=REASSERT_SECONDS, initial_delay=REASSERT_SECONDS, when=_is_open, labels=NOT_CANARY)
async def incident_reassert(body: kopf.Body, memo: Any, logger: kopf.Logger, **kwargs: Any) -> None:
    """Drift repair: re-assert every lever this incident holds, and record what was overridden."""
    await _reconcile(body, memo, logger, kwargs["incidents_by_namespace"])


@kopf.on.delete(*RESOURCE, labels=NOT_CANARY)
async def incident_deleted(body: kopf.Body, memo: Any, logger: kopf.Logger, **kwargs: Any) -> None:
    """Release what this incident held (levers another open incident holds stay in force)."""
    try:
        others = incident_views(kwargs["incidents_by_namespace"], body["metadata"]["namespace"])
        await reconciler.release_deleted_incident(memo.api, plain(body), others=others)
    except ApiError as error:
        raise kopf.TemporaryError(f"Kubernetes API: {error}", delay=1 if error.transient else 15) from error
    logger.info("Released the levers of deleted incident %s", body["metadata"]["name"])
