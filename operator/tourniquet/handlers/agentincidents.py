"""AgentIncident handlers: every watch event goes to the incident driver, which decides what to do, and to the
postmortem writer (:mod:`tourniquet.handlers.postmortem`).

Incidents are level-triggered (see :mod:`tourniquet.reconcilers.incident_driver`): no Kopf change handler,
so Kopf adds no finalizer, no progress annotation and no round trip before containment starts.
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any

import kopf

from tourniquet.adapters.ledger import Ledgers
from tourniquet.domain.containment import IncidentView
from tourniquet.handlers.agentdeployments import incident_views, plain, start_agents
from tourniquet.handlers.freshness import NOT_CANARY
from tourniquet.handlers.startup import stop_task
from tourniquet.reconcilers.incident_driver import IncidentDriver

RESOURCE = ("tourniquet.dev", "v1alpha1", "agentincidents")
# Drift repair: how often an open incident's levers are re-asserted. Read once, at import.
REASSERT_SECONDS = float(os.environ.get("TOURNIQUET_REASSERT_SECONDS", "10"))


@kopf.on.startup()
async def start_incident_driver(memo: Any, **kwargs: Any) -> None:
    index: kopf.Index[str, IncidentView] = kwargs["incidents_by_namespace"]
    memo.incidents = IncidentDriver(
        memo.api,
        lambda namespace: incident_views(index, namespace),
        start_agents(memo, kwargs),
        reassert_seconds=REASSERT_SECONDS,
        ledgers=Ledgers(),
    )
    memo.incidents_task = asyncio.create_task(memo.incidents.run(), name="tourniquet-incidents")
    memo.agents_task = asyncio.create_task(memo.agents.run(), name="tourniquet-agents")


@kopf.on.cleanup()
async def stop_incident_driver(memo: Any, **_: Any) -> None:
    await stop_task(getattr(memo, "incidents_task", None))
    await stop_task(getattr(memo, "agents_task", None))
    incidents = getattr(memo, "incidents", None)
    if incidents is not None:
        incidents.ledgers.close()  # the agents' ledgers the undo read (their connection pools)


@kopf.on.event(*RESOURCE, labels=NOT_CANARY)
async def incident_event(event: kopf.RawEvent, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Keep the open-incidents gauge in step, let the driver reconcile, release or schedule it, and the postmortems
    see it (one handler for all three: Kopf's machinery runs once per handler and event, and every incident's every
    event comes through here)."""
    meta = body.get("metadata") or {}
    if not meta.get("name"):
        return
    kind = event.get("type")
    memo.metrics.open_incidents.track(meta.get("namespace", ""), meta["name"], None if kind == "DELETED" else body)
    copy = functools.cache(lambda: plain(body))  # at most one deep copy for both
    memo.incidents.on_event(kind, body, copy=copy)
    memo.postmortems.on_event(kind, body, copy)
