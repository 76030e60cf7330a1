"""Watch freshness (see :mod:`tourniquet.freshness`): the canary's writer, the event counters, the probe.

Settings, read once at start-up: ``TOURNIQUET_CANARY_SECONDS`` (30; 0 turns the canary off),
``TOURNIQUET_CANARY_STALE_SECONDS`` (3 times the interval), ``TOURNIQUET_CANARY_NAMESPACE`` (default: each
namespace served with ``tourniquet run -n``, else ``POD_NAMESPACE``).

The canary is an AgentIncident: every other AgentIncident handler skips it with ``labels=NOT_CANARY``
(a new one must too) and the incident index (which counts its events) leaves it out, so it gets no
finalizer, no status and no Events.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf

from tourniquet import freshness
from tourniquet.adapters.kube import AGENTINCIDENTS, ApiError, KubeApi
from tourniquet.domain import names
from tourniquet.handlers.startup import stop_task

INCIDENTS = ("tourniquet.dev", "v1alpha1", "agentincidents")
AGENTS = ("tourniquet.dev", "v1alpha1", "agentdeployments")
NOT_CANARY = {names.LABEL_CANARY: kopf.ABSENT}


@kopf.on.startup()
async def start_freshness(memo: Any, logger: kopf.Logger, **_: Any) -> None:
    try:
        settings = freshness.FreshnessSettings.from_env(os.environ, getattr(memo, "served_namespaces", None))
    except ValueError as error:
        logger.error("Watch canary is off: %s", error)
        settings = freshness.FreshnessSettings(namespaces=(), off_reason=str(error))
    state = freshness.WatchFreshness(settings, started_at=time.monotonic())
    memo.freshness = state
    memo.freshness_unhook = memo.metrics.before_scrape(lambda: state.publish(time.monotonic()))
    memo.canary_task = None
    if settings.namespaces:
        memo.canary_task = asyncio.create_task(_write_canaries(memo, state, logger), name="tourniquet-canary")
        logger.info(
            "Started the watch canary %s in %s: written every %gs, stale after %gs",
            names.CANARY_NAME,
            ", ".join(settings.namespaces),
            settings.interval_seconds,
            settings.stale_seconds,
        )
    else:
        logger.warning("Watch canary is off (%s): only the last-event age can tell a frozen watch", settings.off_reason)


@kopf.on.cleanup()
async def stop_freshness(memo: Any, **_: Any) -> None:
    await stop_task(getattr(memo, "canary_task", None))
    unhook = getattr(memo, "freshness_unhook", None)
    if unhook is not None:
        unhook()
    state = getattr(memo, "freshness", None)
    if state is not None:
        state.forget()


async def _write_canaries(memo: Any, state: freshness.WatchFreshness, logger: kopf.Logger) -> None:
    """Write each canary every interval; say when the watch goes stale and when it recovers."""
    settings = state.settings
    created: set[str] = set()
    stale: set[str] = set()
    written = datetime.now(UTC)
    while True:
        api: KubeApi | None = getattr(memo, "api", None)  # built by the other start-up handler
        for namespace in settings.namespaces:
            if api is None:
                break
            written = max(datetime.now(UTC), written + timedelta(microseconds=1))  # rising, even if the clock steps
            token = freshness.canary_token(written)
            try:
                if namespace not in created:
                    body = freshness.canary_body(namespace, settings.interval_seconds)
                    await api.create_or_get(AGENTINCIDENTS, namespace, body)
                    created.add(namespace)
                state.canary_written(namespace, token, time.monotonic())
                await api.patch(AGENTINCIDENTS, namespace, names.CANARY_NAME, freshness.canary_patch(token))
            except ApiError as error:
                state.canary_failed(namespace, token, f"writing it failed: {error}")
                if error.not_found:
                    created.discard(namespace)
            except Exception as error:  # the canary must keep trying: a dead task would read as a frozen watch
                logger.exception("Could not write the watch canary in namespace %s", namespace)
                state.canary_failed(namespace, token, f"writing it failed: {error!r}")
        for verdict in state.verdicts(time.monotonic()):
            where, why = verdict.namespace, verdict.message
            if verdict.stale and where not in stale:
                stale.add(where)
                logger.error("The AgentIncidents watch went stale in namespace %s: %s", where, why)
            elif not verdict.stale and where in stale:
                stale.discard(where)
                logger.warning("The AgentIncidents watch recovered in namespace %s: %s", where, why)
        await asyncio.sleep(settings.interval_seconds)


# The events are counted by indexers, not @kopf.on.event handlers: Kopf calls both for every event of every
# object, but logs an on.event handler's every success at INFO (a log line per canary write); indexers log
# only their failures (kopf/_core/reactor/processing.py). AgentIncident events are counted by the incident
# index (handlers/agentdeployments.py), which calls this: one indexer per incident event, not two.


def count_incident_event(body: kopf.Body, memo: Any) -> None:
    state: freshness.WatchFreshness | None = getattr(memo, "freshness", None)
    if state is None:
        return
    now = time.monotonic()
    state.event_seen("agentincidents", now)
    if freshness.is_canary(body):
        namespace = (body.get("metadata") or {}).get("namespace", "")
        state.canary_seen(namespace, freshness.canary_token_of(body), now)


@kopf.index(*AGENTS)
async def agent_events(memo: Any, **_: Any) -> None:
    state: freshness.WatchFreshness | None = getattr(memo, "freshness", None)
    if state is not None:
        state.event_seen("agentdeployments", time.monotonic())
    return None


@kopf.on.probe(id="watchFreshness")
async def watch_freshness(memo: Any, **_: Any) -> dict[str, Any]:
    """In Kopf's health endpoint: fresh, stale or off. It does not fail the probe (a restart would not
    help while the API server is unreachable); alert on tourniquet_watch_stale instead."""
    state: freshness.WatchFreshness | None = getattr(memo, "freshness", None)
    return state.report(time.monotonic()) if state is not None else {"status": "starting"}
