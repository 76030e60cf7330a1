"""Regression cases: their Accepted condition follows their agent's existence. An agent deleted also loses its
readiness metrics."""

from __future__ import annotations

from typing import Any

import kopf

from tourniquet import review_metrics
from tourniquet.adapters.kube import ApiError
from tourniquet.reconcilers import regression


def _behind(body: kopf.Body) -> bool:
    status = body.get("status") or {}
    return not status or status.get("observedGeneration") != body["metadata"].get("generation")


@kopf.on.event("tourniquet.dev", "v1alpha1", "agentregressioncases")
async def case_event(event: kopf.RawEvent, body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """A new or changed case (and every case at start-up): check the agent it names."""
    if event.get("type") == "DELETED" or not (_behind(body) or event.get("type") is None):
        return
    try:
        await regression.reconcile_case(memo.api, dict(body))
    except ApiError as error:
        logger.warning("Could not check the agent of this regression case: %s", error)


@kopf.on.event("tourniquet.dev", "v1alpha1", "agentdeployments")
async def agent_added_or_deleted(
    event: kopf.RawEvent, body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any
) -> None:
    """An agent created or deleted: the cases naming it say so (the initial listing is left to the cases)."""
    kind = event.get("type")
    if kind not in ("ADDED", "DELETED"):
        return
    meta = body["metadata"]
    if kind == "DELETED":
        review_metrics.forget_agent(meta["namespace"], meta["name"])
    try:
        await regression.agent_came_or_went(memo.api, meta["namespace"], meta["name"], exists=kind == "ADDED")
    except ApiError as error:
        logger.warning("Could not update the regression cases of this agent: %s", error)
