"""Kubernetes Events for timeline entries: best effort, never in the way of containment."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from tourniquet.adapters.kube import EVENTS, ApiError, KubeApi

log = logging.getLogger(__name__)
WARNING_EVENTS = {"DriftRepaired", "Failed"}


async def post_events(api: KubeApi, involved: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    """One Event per timeline entry, on the object (kubectl describe shows them)."""
    meta = involved["metadata"]
    for entry in entries:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        message = entry.get("message", "")
        if entry.get("agent"):
            message = f"{entry['agent']}: {message}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", "tourniquet.dev/v1alpha1"),
                "kind": involved.get("kind", "AgentIncident"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "reason": entry["event"],
            "message": message[:1024],
            "type": "Warning" if entry["event"] in WARNING_EVENTS else "Normal",
            "source": {"component": "tourniquet"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await api.create(EVENTS, meta["namespace"], body)
        except ApiError as error:
            log.warning("Could not post the event %s on %s: %s", entry["event"], meta["name"], error)


_pending: set[asyncio.Task[None]] = set()


def post_events_later(api: KubeApi, involved: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    """Post the events in the background: containment does not wait for its own paperwork."""
    if not entries:
        return
    task = asyncio.get_running_loop().create_task(post_events(api, involved, entries))
    _pending.add(task)
    task.add_done_callback(_pending.discard)
