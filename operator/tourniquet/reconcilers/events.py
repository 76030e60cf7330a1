"""Kubernetes Events for timeline entries: best effort, never in the way of containment (they are posted
from the background lane, :mod:`tourniquet.reconcilers.lane`)."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from tourniquet.adapters.kube import EVENTS, ApiError, KubeApi
from tourniquet.reconcilers.lane import Lane

log = logging.getLogger(__name__)
WARNING_EVENTS = {"AgentMissing", "DriftRepaired", "Failed", "LedgerUnavailable", "CompensationRefused"}


def object_ref(involved: dict[str, Any]) -> dict[str, Any]:
    """The object a timeline belongs to, as an Event's involvedObject (and a log record's k8s_ref)."""
    meta = involved["metadata"]
    return {
        "apiVersion": involved.get("apiVersion", "tourniquet.dev/v1alpha1"),
        "kind": involved.get("kind", "AgentIncident"),
        "name": meta["name"],
        "namespace": meta["namespace"],
        "uid": meta.get("uid"),
    }


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
            "involvedObject": object_ref(involved),
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


def post_events_later(api: KubeApi, involved: dict[str, Any], entries: list[dict[str, Any]], lane: Lane) -> None:
    """Log the timeline entries now; post their Events in the background, once containment is quiet on `lane`
    (or after its event_defer_seconds)."""
    if entries:
        log_timeline(involved, entries)
        lane.after_containment(lambda: post_events(api, involved, entries))


def log_timeline(involved: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    """One log line per timeline entry, naming the object (`[namespace/name]`, or `object` in JSON logs)."""
    ref = object_ref(involved)
    for entry in entries:
        level = logging.WARNING if entry["event"] in WARNING_EVENTS else logging.INFO
        agent = f"{entry['agent']}: " if entry.get("agent") else ""
        log.log(level, "%s: %s%s", entry["event"], agent, entry.get("message", ""), extra={"k8s_ref": ref})
