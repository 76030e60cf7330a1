"""An AgentDeployment's status, written as a whole: a key the new status lacks is removed, not left behind."""

from __future__ import annotations

from typing import Any

from tourniquet.adapters.kube import AGENTDEPLOYMENTS, KubeApi
from tourniquet.domain.patches import merge_patch


async def write_status(api: KubeApi, body: dict[str, Any], new_status: dict[str, Any]) -> dict[str, Any] | None:
    """Patch /status when it changed (null for every key the new status dropped, at any depth); the agent as
    written, or None when there was nothing to write."""
    written = body.get("status") or {}
    if new_status == written:
        return None
    meta = body["metadata"]
    patch = {"status": merge_patch(written, new_status)}
    return await api.patch(AGENTDEPLOYMENTS, meta["namespace"], meta["name"], patch, subresource="status")
