"""An AgentDeployment's status: written at once, or, from an incident pass, once the containment burst is over.

An incident pass has applied the levers before it reports anything; the incident's status carries that
report. The agent's own status (its `Contained` condition and containment summary) follows like the
incident's Events: once no containment pass has run for a moment, never later than EVENT_DEFER_SECONDS.
In a burst of incidents that takes one write (and its schema validation and watch echo) per incident
off the path to `Contained`.

A deferred status is held per agent, the latest one only. Whoever takes the agent's lock to read or
write its status writes a pending one first (:func:`flush`), so no pass ever computes from, or
overwrites, a status older than one already decided. A failed deferred write is logged and dropped:
the next pass over the agent (an open incident is re-asserted every few seconds) computes it again.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass
from typing import Any

from tourniquet.adapters.kube import AGENTDEPLOYMENTS, ApiError, KubeApi
from tourniquet.domain.patches import merge_patch
from tourniquet.reconcilers.lane import after_containment
from tourniquet.reconcilers.locks import lock_for

log = logging.getLogger(__name__)

Key = tuple[str, str]  # namespace, name


@dataclass
class _Pending:
    api: KubeApi
    status: dict[str, Any]
    written: dict[str, Any]  # the status it replaces, as last written (what the patch removes keys from)


_pending: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Key, _Pending]] = weakref.WeakKeyDictionary()


def _in_loop() -> dict[Key, _Pending]:
    return _pending.setdefault(asyncio.get_running_loop(), {})


def _key(body: dict[str, Any]) -> Key:
    return body["metadata"]["namespace"], body["metadata"]["name"]


async def write_status(api: KubeApi, body: dict[str, Any], new_status: dict[str, Any]) -> dict[str, Any] | None:
    """Patch /status when it changed; the agent as written, or None when there was nothing to write."""
    if new_status == (body.get("status") or {}):
        return None
    return await _patch_status(api, *_key(body), body.get("status") or {}, new_status)


async def _patch_status(
    api: KubeApi, namespace: str, name: str, written: dict[str, Any], status: dict[str, Any]
) -> dict[str, Any]:
    """Replace `written` by `status`: a key the new status lacks is removed (null), not left behind."""
    patch = {"status": merge_patch(written, status)}
    return await api.patch(AGENTDEPLOYMENTS, namespace, name, patch, subresource="status")


def write_status_later(api: KubeApi, body: dict[str, Any], new_status: dict[str, Any]) -> bool:
    """Hold `new_status` until the burst is over; the caller holds the agent's lock and has flushed.
    True when there is something to write."""
    key = _key(body)
    pending = _in_loop()
    if new_status == (body.get("status") or {}):
        pending.pop(key, None)
        return False
    scheduled = key in pending
    written = pending[key].written if scheduled else body.get("status") or {}
    pending[key] = _Pending(api, new_status, written)
    if not scheduled:
        after_containment(lambda: _flush_locked(key))
    return True


async def flush(namespace: str, name: str) -> dict[str, Any] | None:
    """Write the agent's pending status, if any (the caller holds the agent's lock); the agent as written."""
    item = _in_loop().pop((namespace, name), None)
    if item is None:
        return None
    try:
        return await _patch_status(item.api, namespace, name, item.written, item.status)
    except ApiError as error:
        if not error.not_found:
            log.warning("AgentDeployment %s/%s: status not written (redone next pass): %s", namespace, name, error)
        return None


async def _flush_locked(key: Key) -> None:
    async with lock_for("AgentDeployment", *key):
        await flush(*key)
