"""Regression cases: each says whether the agent it names exists (its Accepted condition).

The gate reads the cases themselves (see :func:`tourniquet.reconcilers.gate.regression_cases`); this keeps their
status honest as cases and agents come and go.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from tourniquet.adapters.kube import AGENTDEPLOYMENTS, AGENTREGRESSIONCASES, ApiError, KubeApi
from tourniquet.domain import regression

log = logging.getLogger(__name__)


async def reconcile_case(api: KubeApi, body: dict[str, Any], *, agent_exists: bool | None = None) -> None:
    """Write the case's Accepted condition from whether its agent exists now (only when it changed)."""
    meta = body["metadata"]
    agent = str((body.get("spec") or {}).get("agent") or "")
    if agent_exists is None:
        agent_exists = bool(agent) and await api.get_or_none(AGENTDEPLOYMENTS, meta["namespace"], agent) is not None
    status = body.get("status") or {}
    new = regression.case_status(
        status,
        agent=agent,
        namespace=meta["namespace"],
        exists=agent_exists,
        now=datetime.now(UTC),
        generation=meta.get("generation"),
    )
    if new == status:
        return
    try:
        await api.patch(AGENTREGRESSIONCASES, meta["namespace"], meta["name"], {"status": new}, subresource="status")
    except ApiError as error:
        if not error.not_found:
            raise
        return
    if not agent_exists:
        log.warning(
            "AgentRegressionCase %s/%s names AgentDeployment %s, which does not exist",
            meta["namespace"],
            meta["name"],
            agent,
        )


async def agent_came_or_went(api: KubeApi, namespace: str, agent: str, *, exists: bool) -> None:
    """An agent was created or deleted: the cases naming it say so."""
    for body in await api.list(AGENTREGRESSIONCASES, namespace):
        if (body.get("spec") or {}).get("agent") == agent:
            await reconcile_case(api, body, agent_exists=exists)
