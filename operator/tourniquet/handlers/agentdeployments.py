"""AgentDeployment handlers: every cause calls the same reconcile."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import kopf

from tourniquet.adapters.kube import ApiError
from tourniquet.reconcilers import agentdeployment as reconciler

RESOURCE = ("tourniquet.dev", "v1alpha1", "agentdeployments")
# How often every agent is re-reconciled (drift repair, promotion). Read once, at import.
RESYNC_SECONDS = float(os.environ.get("TOURNIQUET_RESYNC_SECONDS", "30"))


def plain(body: kopf.Body) -> dict[str, Any]:
    """A deep, mutable copy of Kopf's read-only body view."""
    result: dict[str, Any] = json.loads(json.dumps(dict(body)))
    return result


async def _reconcile(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger) -> None:
    try:
        outcome = await reconciler.reconcile_agent_deployment(memo.api, plain(body))
    except ApiError as error:
        delay = 1 if error.transient else 30
        raise kopf.TemporaryError(f"Kubernetes API: {error}", delay=delay) from error
    if not outcome.ready:
        logger.warning("Not ready: %s: %s", outcome.reason, outcome.message)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def agent_changed(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    await _reconcile(body, memo, logger)


@kopf.timer(*RESOURCE, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def agent_resync(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Drift repair and promotion: the same reconcile, on a timer."""
    await _reconcile(body, memo, logger)


@kopf.on.delete(*RESOURCE)
async def agent_deleted(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Unwire the consumers, so their pods do not reference a bundle ConfigMap that is going away."""
    try:
        await reconciler.unwire_agent_deployment(memo.api, plain(body))
    except ApiError as error:
        raise kopf.TemporaryError(f"Kubernetes API: {error}", delay=2 if error.transient else 30) from error
