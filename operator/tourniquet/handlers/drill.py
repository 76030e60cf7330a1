"""Drills: one daemon per AgentDrill runs it when it is due (at once for a one-off drill, on its schedule
otherwise), then reconciles the agent so its readiness checklist shows the result."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import kopf

from tourniquet.adapters.kube import AGENTDRILLS, ApiError
from tourniquet.domain import drill as decide
from tourniquet.domain.conditions import parse_time
from tourniquet.models.review import AgentDrillSpec
from tourniquet.reconcilers import drill as reconciler

IDLE_SECONDS = 30.0  # how often a waiting drill looks again (a spec change is seen then too)


@kopf.daemon("tourniquet.dev", "v1alpha1", "agentdrills", id="drill", cancellation_timeout=5.0)
async def run_drills(
    body: kopf.Body, memo: Any, logger: kopf.Logger, stopped: kopf.DaemonStopped, **kwargs: Any
) -> None:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    while not stopped:
        try:
            fresh = await memo.api.get_or_none(AGENTDRILLS, namespace, name)
            if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                return
            spec = AgentDrillSpec.model_validate(fresh.get("spec") or {})
            now = datetime.now(UTC)
            created = parse_time(fresh["metadata"].get("creationTimestamp")) or now
            step = decide.plan_drill(spec, fresh.get("status") or {}, created, now)
            if step.kind in ("start", "resume"):
                run = await reconciler.run_drill(memo.api, json.loads(json.dumps(fresh)))
                logger.info("Drill run %s: %s: %s", run.get("run"), run.get("result"), run.get("message"))
                await memo.agents.reconcile(namespace, spec.agent)
                continue
            if step.kind == "done":
                return  # a one-off drill that ran: nothing more to do until it is deleted
            wait = IDLE_SECONDS if step.at is None else min(IDLE_SECONDS, max(0.0, (step.at - now).total_seconds()))
        except ApiError as error:
            logger.warning("Drill pass failed: Kubernetes API: %s", error)
            wait = 5.0
        except ValueError as error:  # a spec the API server let through but that cannot run (a bad schedule)
            logger.error("Drill cannot run: %s", error)
            wait = IDLE_SECONDS
        await stopped.wait(wait)
