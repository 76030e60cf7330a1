"""Drills (pure): when a drill runs, the incident it opens, and the verdict read from what was observed.

A run opens `<drill>-<run>`, an AgentIncident with `drill: true` (its levers only: never the playbook's
rollback), on the agent with the drill's levers: shadow and revokeTools unless the drill lists drain. It is
judged on timestamps recorded as things happened — the incident's own timings (from its creation to each lever
observed applied, and to Contained) and the runtime's acknowledgements (when each pod applied the flag) — so a
run resumed after an operator restart is judged the same. It passes when, within `limitSeconds`, every lever is
observed applied, every live pod of the agent acknowledged shadow and the revoked tools, and the evidence was
captured; a failed run names the lever that did not land.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from tourniquet.domain import names
from tourniquet.domain.conditions import parse_time
from tourniquet.domain.readiness import Ack, DrillRecord, ack_configmap
from tourniquet.models import AgentDeploymentSpec, Lever
from tourniquet.models.cron import next_run
from tourniquet.models.review import AgentDrillSpec, DrillCheck, DrillLever, ReadinessSpec

LABEL_DRILL = f"{names.PREFIX}/drill"
HISTORY = 10
ACKNOWLEDGED = (Lever.SHADOW, Lever.REVOKE_TOOLS)  # the levers the runtime itself honours and reports


def incident_name(drill: str, run: int) -> str:
    return names._bounded(f"{drill}-{run}")


@dataclass(frozen=True)
class DrillStep:
    kind: str  # start | resume | wait | done
    at: datetime | None = None  # wait: until then (None: until the spec changes)


def plan_drill(spec: AgentDrillSpec, status: dict[str, Any], created: datetime, now: datetime) -> DrillStep:
    """Whether to start a run now, resume one, or wait (until when)."""
    last = status.get("lastRun") or {}
    if last.get("result") == "Running":
        return DrillStep("resume")
    if spec.schedule is None:
        return DrillStep("start") if not status.get("runs") else DrillStep("done")
    if spec.suspend:
        return DrillStep("wait")
    due = next_run(spec.schedule, parse_time(last.get("startedAt")) or created)
    return DrillStep("start") if now >= due else DrillStep("wait", due)


def next_run_at(spec: AgentDrillSpec, after: datetime) -> datetime | None:
    return None if spec.schedule is None or spec.suspend else next_run(spec.schedule, after)


def build_incident(
    namespace: str, drill: dict[str, Any], run: int, spec: AgentDrillSpec, *, now: datetime
) -> dict[str, Any]:
    meta = drill["metadata"]
    owner = names.owner_reference("AgentDrill", meta["name"], meta["uid"])
    incident: dict[str, Any] = {
        "agents": [spec.agent],
        "severity": "SEV3",
        "class": "other",
        "summary": f"Drill {meta['name']} (run {run}): {', '.join(lever.value for lever in spec.levers)}; "
        "released when measured",
        "contain": [lever.value for lever in spec.levers],
        "drill": True,
    }
    if spec.tools:
        incident["revokeTools"] = list(spec.tools)
    labels = {names.LABEL_MANAGED_BY: names.MANAGED_BY, LABEL_DRILL: meta["name"][:63].rstrip("-.")}
    return names.owned(
        "tourniquet.dev/v1alpha1",
        "AgentIncident",
        incident_name(meta["name"], run),
        namespace,
        owner,
        labels=labels,
        spec=incident,
    )


def expected_tools(spec: AgentDrillSpec, agent: AgentDeploymentSpec | None) -> tuple[str, ...]:
    if spec.tools:
        return tuple(sorted(spec.tools))
    if agent is None:
        return ()
    from tourniquet.domain.containment import write_tools

    return tuple(sorted(write_tools(agent)))


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max(0.0, (end - start).total_seconds()), 3)


@dataclass
class Observed:
    """What a drill run looks at: the incident as it is now, the runtime's acknowledgements, the evidence."""

    incident: dict[str, Any] | None
    acks: list[Ack]
    evidence: dict[str, Any] | None  # the evidence ConfigMap, once it exists
    trace: tuple[bool | None, str] = (None, "")


@dataclass
class Verdict:
    complete: bool  # everything landed: release now
    run: dict[str, Any] = field(default_factory=dict)  # lastRun fields (levers, seconds, checks, message)
    missing: list[str] = field(default_factory=list)  # what did not land, lever by lever


def judge(
    spec: AgentDrillSpec,
    agent: AgentDeploymentSpec | None,
    observed: Observed,
    *,
    settings: ReadinessSpec | None = None,
) -> Verdict:
    """The run as observed so far (timestamps as recorded, so re-judging later gives the same answer)."""
    settings = settings or ReadinessSpec()
    incident = observed.incident or {}
    status = incident.get("status") or {}
    created = parse_time((incident.get("metadata") or {}).get("creationTimestamp"))
    timings = status.get("timings") or {}
    applied_at = timings.get("levers") or {}
    states = {(lv.get("agent"), lv.get("name")): lv for lv in status.get("levers") or []}
    live_since = created - timedelta(seconds=settings.acknowledged_within_seconds) if created else None
    live = {a.pod for a in observed.acks if a.reported_at and live_since and a.reported_at >= live_since}
    tools = set(expected_tools(spec, agent))
    levers: list[DrillLever] = []
    missing: list[str] = []
    ack_seconds: list[float] = []
    for lever in spec.levers:
        seconds = applied_at.get(f"{spec.agent}/{lever.value}")
        seen = states.get((spec.agent, lever.value)) or {}
        entry = DrillLever(
            name=lever, applied=seconds is not None, applied_seconds=seconds, detail=str(seen.get("detail") or "")
        )
        if seconds is None:
            missing.append(f"{lever.value}: not observed applied ({seen.get('state') or 'not yet'})")
        if lever in ACKNOWLEDGED:

            def honours(a: Ack, lever: Lever = lever) -> bool:
                return a.mode == "shadow" if lever == Lever.SHADOW else tools <= set(a.revoked)

            done = [a for a in observed.acks if a.pod in live and honours(a) and a.applied_at and created]
            done = [a for a in done if a.applied_at and created and a.applied_at >= created - timedelta(seconds=1)]
            pods = {a.pod for a in done}
            entry.acknowledged = bool(live) and pods >= live  # set, so written; left unset for the others
            if entry.acknowledged:
                acknowledged = max(_seconds(created, a.applied_at) or 0.0 for a in done)
                entry.acknowledged_seconds = acknowledged
                ack_seconds.append(acknowledged)
            elif not live:
                missing.append(
                    f"{lever.value}: not acknowledged: no agent pod reports its control flag "
                    f"({ack_configmap(spec.agent)} is empty or stale)"
                )
            else:
                waiting = ", ".join(sorted(live - pods))
                missing.append(f"{lever.value}: not acknowledged by the runtime in pod(s) {waiting}")
        levers.append(entry)
    evidence_ok, evidence_detail = None, "not captured yet"
    if observed.evidence is not None:
        data = observed.evidence.get("data") or {}
        size = sum(len(k) + len(v.encode()) for k, v in data.items())
        evidence_ok, evidence_detail = True, f"ConfigMap {observed.evidence['metadata']['name']} ({size} bytes)"
    else:
        missing.append("evidence: not captured")
    if observed.trace[0] is False:
        missing.append(f"trace: {observed.trace[1]}")
    contained = timings.get("containedSeconds")
    run = {
        "containedSeconds": contained,
        "acknowledgedSeconds": max(ack_seconds)
        if ack_seconds and len(ack_seconds) == len([lv for lv in spec.levers if lv in ACKNOWLEDGED])
        else None,
        "levers": [lever.to_status() for lever in levers],
        "evidence": DrillCheck(ok=evidence_ok, detail=evidence_detail).to_status(),
        "trace": DrillCheck(ok=observed.trace[0], detail=observed.trace[1]).to_status(),
    }
    return Verdict(not missing and contained is not None, run, missing)


def finish(spec: AgentDrillSpec, verdict: Verdict) -> tuple[str, str]:
    """Passed or Failed, and the sentence that says why."""
    run = verdict.run
    limit = spec.limit_seconds
    late = []
    contained, acknowledged = run.get("containedSeconds"), run.get("acknowledgedSeconds")
    if contained is not None and contained > limit:
        late.append(f"contained in {contained:.1f}s, over the {limit:g}s limit")
    for lever in run.get("levers") or []:
        seconds = lever.get("acknowledgedSeconds")
        if seconds is not None and seconds > limit:
            late.append(f"{lever['name']}: acknowledged in {seconds:.1f}s, over the {limit:g}s limit")
    problems = list(verdict.missing) + late
    if problems or contained is None:
        if not problems:
            problems = ["not contained"]
        return "Failed", f"did not land within {limit:g}s: " + "; ".join(problems)
    said = f"contained in {contained:.1f}s"
    if acknowledged is not None:
        said += f", acknowledged by the runtime in {acknowledged:.1f}s"
    return "Passed", said + "; evidence captured; released"


TRACE_LOOKBACK = timedelta(hours=24)  # the agent's latest action in this much is the one whose trace is read


def trace_check(
    raw_agent_spec: dict[str, Any], ledger_given: bool, latest: tuple[str, str, bool] | str | None = None
) -> tuple[bool | None, str]:
    """Whether a decision trace can be produced for the agent: its latest action's, read from the ledger.
    `latest`: (action key, tool, whether it has a trace), None when it did no action in TRACE_LOOKBACK, or the
    error the ledger gave. None (not checked) when the agent has no ledger or the operator was not given it."""
    if not raw_agent_spec.get("ledger"):
        return None, "no ledger configured (spec.ledger): no decision trace can be produced for this agent"
    if not ledger_given:
        return None, (
            "spec.ledger is set, but the operator cannot read it (its Secret: list it in the chart's "
            "ledger.secretNames; or TOURNIQUET_LEDGER): not checked"
        )
    if isinstance(latest, str):
        return False, f"the ledger could not be read: {latest}"
    if latest is None:
        return None, f"no action in the last {TRACE_LOOKBACK.total_seconds() / 3600:g} h to read a decision trace of"
    key, tool, traced = latest
    if traced:
        return True, f"decision trace of the latest action read from the ledger ({tool}, {key})"
    return False, f"the latest action ({tool}, {key}) has no decision trace in the ledger"


def records(drills: list[dict[str, Any]], agent: str) -> list[DrillRecord]:
    """Every finished run of the drills on `agent` (their last run and history), for the readiness checklist."""
    found = []
    for body in drills:
        if (body.get("spec") or {}).get("agent") != agent:
            continue
        status = body.get("status") or {}
        seen: set[int] = set()
        for run in [status.get("lastRun") or {}, *(status.get("history") or [])]:
            if run.get("result") not in ("Passed", "Failed") or run.get("run") in seen:
                continue
            seen.add(run.get("run"))
            found.append(
                DrillRecord(
                    body["metadata"]["name"],
                    parse_time(run.get("finishedAt")),
                    run.get("result") == "Passed",
                    run.get("containedSeconds"),
                    run.get("acknowledgedSeconds"),
                )
            )
    return found
