"""The redeploy gate's watch: an evaluation Job that finished (or was deleted) reconciles its agent at once.

Only Jobs labelled `tourniquet.dev/component: evaluation` are looked at, and only when they finished or went
away: a running Job's progress changes nothing (the agent's resync still looks at it every few minutes).
"""

from __future__ import annotations

from typing import Any

import kopf

from tourniquet.adapters.kube import ApiError
from tourniquet.domain import gate, names

EVALUATION_JOBS = {names.LABEL_COMPONENT: gate.COMPONENT_EVALUATION}


@kopf.on.event("batch", "v1", "jobs", labels=EVALUATION_JOBS)
async def evaluation_job_event(
    event: kopf.RawEvent, body: kopf.Body, memo: Any, logger: kopf.Logger, **kwargs: Any
) -> None:
    meta = body.get("metadata") or {}
    finished, _, _ = gate.job_finished(dict(body))
    if event.get("type") != "DELETED" and finished is None:
        return
    namespace, agent = meta["namespace"], (meta.get("labels") or {}).get(names.LABEL_AGENT)
    if not agent:
        return
    try:
        await memo.agents.reconcile(namespace, agent)
    except ApiError as error:
        logger.warning(
            "Reconciling agent %s/%s after evaluation Job %s failed: %s", namespace, agent, meta["name"], error
        )
