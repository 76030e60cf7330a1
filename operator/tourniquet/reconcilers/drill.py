"""Run one drill: record its start, open its incident, watch until everything landed (or the limit passed),
release, record the result. Resumable: a run found `Running` (the operator restarted) goes on from what its
incident and the acknowledgements recorded. The decisions are in :mod:`tourniquet.domain.drill`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from tourniquet import review_metrics
from tourniquet.adapters.kube import AGENTDEPLOYMENTS, AGENTDRILLS, AGENTINCIDENTS, CONFIGMAPS, ApiError, KubeApi
from tourniquet.domain import drill as decide
from tourniquet.domain import readiness
from tourniquet.domain.agent import parse_spec
from tourniquet.domain.conditions import parse_time, set_condition
from tourniquet.domain.incident import micro_time
from tourniquet.models.review import AgentDrillSpec
from tourniquet.reconcilers.postmortem import agent_ledger, operator_ledger

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25


def _now() -> datetime:
    return datetime.now(UTC)


async def drill_records(api: KubeApi, namespace: str, agent: str) -> list[readiness.DrillRecord]:
    """The finished runs of the drills on `agent` (the readiness checklist's kill-switch item)."""
    return decide.records(await api.list(AGENTDRILLS, namespace), agent)


def _latest_traced(target: str, agent: str, now: datetime) -> tuple[str, str, bool] | str | None:
    """The agent's latest action in the lookback and whether it has a decision trace (blocking: a thread)."""
    from tourniquet.runtime.ledger import LedgerError, open_ledger

    try:
        with open_ledger(target) as ledger:
            actions = ledger.actions(agent, now - decide.TRACE_LOOKBACK, None)
            if not actions:
                return None
            latest = actions[-1]
            return latest.idempotency_key, latest.tool, ledger.trace(latest.idempotency_key) is not None
    except (LedgerError, OSError) as error:
        return str(error)


async def check_trace(
    api: KubeApi, namespace: str, agent: str, agent_body: dict[str, Any] | None
) -> tuple[bool | None, str]:
    raw_agent_spec = (agent_body or {}).get("spec") or {}
    if not raw_agent_spec.get("ledger") or agent_body is None:
        return decide.trace_check(raw_agent_spec, False)
    target, _ = await agent_ledger(api, namespace, agent_body, operator_ledger())
    if target is None:
        return decide.trace_check(raw_agent_spec, False)
    latest = await asyncio.to_thread(_latest_traced, target, agent, _now())
    return decide.trace_check(raw_agent_spec, True, latest)


async def _patch_status(api: KubeApi, body: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return await api.patch(AGENTDRILLS, meta["namespace"], meta["name"], {"status": status}, subresource="status")


async def _observe(api: KubeApi, namespace: str, spec: AgentDrillSpec, incident: str) -> decide.Observed:
    body, ack = await asyncio.gather(
        api.get_or_none(AGENTINCIDENTS, namespace, incident),
        api.get_or_none(CONFIGMAPS, namespace, readiness.ack_configmap(spec.agent)),
    )
    evidence_name = (((body or {}).get("status") or {}).get("evidence") or {}).get("configMap")
    evidence = await api.get_or_none(CONFIGMAPS, namespace, evidence_name) if evidence_name else None
    return decide.Observed(body, readiness.parse_acks((ack or {}).get("data")), evidence)


async def _open_real_incidents(api: KubeApi, namespace: str, agent: str) -> list[str]:
    found = []
    for body in await api.list(AGENTINCIDENTS, namespace):
        spec = body.get("spec") or {}
        if agent in (spec.get("agents") or []) and not spec.get("resolved") and not spec.get("drill"):
            found.append(body["metadata"]["name"])
    return sorted(found)


async def run_drill(
    api: KubeApi,
    body: dict[str, Any],
    *,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> dict[str, Any]:
    """One run of the drill, from its start (or where a restarted operator left it) to its recorded result.
    Returns the run as recorded (lastRun)."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    spec = AgentDrillSpec.model_validate(body.get("spec") or {})
    status = dict(body.get("status") or {})
    last = dict(status.get("lastRun") or {})
    agent_body = await api.get_or_none(AGENTDEPLOYMENTS, namespace, spec.agent)
    agent_spec = parse_spec((agent_body or {}).get("spec"))[0] if agent_body else None
    started = _now()

    if last.get("result") != "Running":
        run = int(status.get("runs") or 0) + 1
        base = {"run": run, "incident": decide.incident_name(name, run), "startedAt": micro_time(started)}
        refusal = None
        if agent_body is None:
            refusal = ("Failed", f"AgentDeployment {spec.agent} not found in namespace {namespace}; nothing was opened")
        else:
            busy = await _open_real_incidents(api, namespace, spec.agent)
            if busy:
                refusal = ("Skipped", f"incident(s) {', '.join(busy)} are open on {spec.agent}: a drill waits for calm")
        if refusal is not None:
            finished = {**base, "incident": None, "finishedAt": micro_time(_now()), "result": refusal[0]}
            return await _record(api, body, spec, status, {**finished, "message": refusal[1]}, _now())
        last = {**base, "result": "Running"}
        previous = status.get("lastRun") or {}
        running = {key: last.get(key) for key in {*last, *previous}}  # null: the previous run's fields go
        # Record the run before anything changes: a restart resumes it instead of starting another.
        body = await _patch_status(
            api,
            body,
            {"runs": run, "phase": "Running", "lastRun": running, "observedGeneration": meta.get("generation")},
        )
        log.info("Drill %s/%s run %d started on agent %s", namespace, name, run, spec.agent)
    incident = str(last["incident"])
    started = parse_time(last.get("startedAt")) or started
    await api.create_or_get(
        AGENTINCIDENTS, namespace, decide.build_incident(namespace, body, int(last["run"]), spec, now=started)
    )

    trace = await check_trace(api, namespace, spec.agent, agent_body)
    settings = agent_spec.readiness if agent_spec is not None else None
    deadline = started + timedelta(seconds=spec.limit_seconds)
    while True:
        observed = await _observe(api, namespace, spec, incident)
        observed.trace = trace
        verdict = decide.judge(spec, agent_spec, observed, settings=settings)
        if verdict.complete or _now() >= deadline:
            break
        await sleep(POLL_SECONDS)

    # Release, and see it released (the levers another open incident holds stay, as always).
    released = False
    try:
        await api.patch(AGENTINCIDENTS, namespace, incident, {"spec": {"resolved": True}})
        release_deadline = _now() + timedelta(seconds=max(10.0, spec.limit_seconds))
        while _now() < release_deadline:
            current = await api.get_or_none(AGENTINCIDENTS, namespace, incident)
            conditions = ((current or {}).get("status") or {}).get("conditions") or []
            if current is None or any(c.get("type") == "Resolved" and c.get("status") == "True" for c in conditions):
                released = True
                break
            await sleep(POLL_SECONDS)
    except ApiError as error:
        log.warning("Drill %s/%s could not release incident %s: %s", namespace, name, incident, error)
    result, message = decide.finish(spec, verdict)
    if not released:
        result, message = "Failed", f"{message}; the release was not observed (resolve incident {incident} by hand)"
    final = {**last, **verdict.run, "released": released, "result": result, "message": message}
    final["finishedAt"] = micro_time(_now())
    return await _record(api, body, spec, status, final, started)


def _clean(value: Any) -> Any:
    """Without null values (a list in a merge patch is written as it is, and the schema allows no null)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


async def _record(
    api: KubeApi,
    body: dict[str, Any],
    spec: AgentDrillSpec,
    status: dict[str, Any],
    final: dict[str, Any],
    started: datetime,
) -> dict[str, Any]:
    meta = body["metadata"]
    final = _clean(final)
    history = [final, *[h for h in status.get("history") or [] if h.get("run") != final.get("run")]][: decide.HISTORY]
    last = {key: final.get(key) for key in {*final, *(status.get("lastRun") or {})}}  # null: drop what is stale
    after = parse_time(final.get("startedAt")) or started
    next_at = decide.next_run_at(spec, after)
    passed = final["result"] == "Passed"
    conditions = set_condition(
        list(status.get("conditions") or []),
        "LastRunPassed",
        passed,
        str(final["result"]),
        f"run {final.get('run')}: {final.get('message', '')}",
        now=_now(),
        generation=meta.get("generation"),
    )
    await _patch_status(
        api,
        body,
        {
            "conditions": conditions,
            "runs": max(int(status.get("runs") or 0), int(final.get("run") or 0)),
            "phase": final["result"],
            "lastRun": last,
            "history": history,
            "nextRunAt": micro_time(next_at) if next_at else None,
            "observedGeneration": meta.get("generation"),
        },
    )
    review_metrics.observe_drill(meta["namespace"], spec.agent, final)
    level = logging.INFO if final["result"] == "Passed" else logging.WARNING
    log.log(
        level,
        "Drill %s/%s run %s on %s: %s: %s",
        meta["namespace"],
        meta["name"],
        final.get("run"),
        spec.agent,
        final["result"],
        final.get("message"),
    )
    return final
