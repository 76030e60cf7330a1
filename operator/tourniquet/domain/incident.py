"""An incident's status, computed whole from what was observed (pure).

The timeline only grows; an entry is added when something is first observed (a lever applied, the
evidence captured, containment complete, a release), so re-running over a converged world adds
nothing. `phase` is derived from the conditions, for printer columns only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tourniquet.domain.conditions import condition_is, find_condition, parse_time, rfc3339, set_condition
from tourniquet.domain.containment import WAITS_FOR_EVIDENCE
from tourniquet.models import AgentIncidentStatus, LeverState, LeverStatus
from tourniquet.models.agentincident import EvidenceStatus, TimelineEntry, Timings

# Timeline events recorded once per distinct message (DriftRepaired repeats: each override is news).
ONCE_EVENTS = frozenset({"AgentMissing", "Failed", "RolledBack"})


def micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeverSeen:
    """One lever this incident holds (or held) on one agent, as observed. `held`: the incident still asks for it
    (False once it was taken out of its levers: it is released, as by a resolution)."""

    agent: str
    lever: str
    applied: bool
    detail: str
    other_holders: tuple[str, ...] = ()
    pending: bool = False
    held: bool = True


def derive_phase(conditions: list[dict[str, Any]]) -> str:
    if condition_is(conditions, "Accepted", "False"):
        return "Invalid"
    if condition_is(conditions, "Resolved"):
        return "Resolved"
    if condition_is(conditions, "Contained"):
        return "Contained"
    return "Containing"


def _seconds(start: datetime | None, end: datetime) -> float | None:
    return None if start is None else round(max(0.0, (end - start).total_seconds()), 3)


# An opened-at annotation is taken when it lies from this long before the creationTimestamp to the end of its
# second (the client's clock and its request's way to the API server), and the operator saw the incident after it.
OPENED_AT_SKEW = timedelta(seconds=2)
# Seen later than this after its creationTimestamp, an incident waited for the operator (down, or behind):
# timing it from when the operator saw it would hide that wait.
SEEN_LATE = timedelta(seconds=2)
STARTS = ("openedAt", "firstSeen", "creationTimestamp")  # timings.startedFrom
SECOND = timedelta(seconds=1)  # a creationTimestamp's precision


def plan_start(
    timings: Mapping[str, Any], *, opened_at: str | None, created: str | None, first_seen: datetime
) -> tuple[str, str]:
    """Where an incident's timings start, as (startedAt, startedFrom); decided on its first pass, then kept.

    `openedAt`: the annotation `tourniquet contain` and detection write just before creating the incident
    (microseconds), when it fits the creationTimestamp (see OPENED_AT_SKEW): one copied from another incident,
    or from a clock far off, does not. Else `firstSeen`: when the operator first saw it (an incident applied by
    hand). But when that was more than SEEN_LATE after its creationTimestamp, `creationTimestamp`: a start
    known to the second is closer than one that leaves out the wait."""
    if timings.get("startedAt") and timings.get("startedFrom") in STARTS:
        return str(timings["startedAt"]), str(timings["startedFrom"])
    opened, created_at = parse_time(opened_at), parse_time(created)
    fits = created_at is None or (opened is not None and created_at - OPENED_AT_SKEW <= opened < created_at + SECOND)
    if opened is not None and opened <= first_seen and fits:
        return micro_time(opened), "openedAt"
    if created_at is not None and first_seen - created_at > SEEN_LATE:
        return micro_time(created_at), "creationTimestamp"
    return micro_time(first_seen), "firstSeen"


def incident_status(
    status: dict[str, Any],
    *,
    start: tuple[str, str],  # (startedAt, startedFrom): see plan_start
    generation: int | None,
    agents: list[str],
    levers: list[LeverSeen],
    resolved: bool,
    evidence: dict[str, Any] | None,
    notes: list[tuple[str, str, str | None]],  # (event, message, agent) to add to the timeline
    now: datetime,
    missing: Mapping[str, str] | None = None,  # agents in spec.agents that cannot be contained -> why
) -> dict[str, Any]:
    """`agents`: those acted on (cascade included); a missing agent is reported, retried, never a refusal."""
    missing = dict(missing or {})
    previous_levers = {(lv.get("agent"), lv.get("name")): lv for lv in status.get("levers") or []}
    timeline = list(status.get("timeline") or [])
    stamp = micro_time(now)
    started_at = parse_time(start[0])

    def note(event: str, message: str, agent: str | None = None) -> None:
        entry = TimelineEntry(time=stamp, event=event, message=message, **({"agent": agent} if agent else {}))
        timeline.append(entry.to_status())

    if not any(e.get("event") == "Opened" for e in timeline):  # after Detected, for an incident detection opened
        note("Opened", f"opened on {', '.join([*agents, *(a for a in missing if a not in agents)])}")
    new_levers: list[LeverStatus] = []
    timings = {**(status.get("timings") or {}), "startedAt": start[0], "startedFrom": start[1]}
    lever_timings = dict(timings.get("levers") or {})
    for seen in levers:
        before = previous_levers.get((seen.agent, seen.lever)) or {}
        if resolved or not seen.held:
            state = "Released"
            detail = (
                f"released by this incident; still held by {', '.join(seen.other_holders)}"
                if seen.other_holders
                else f"released: {seen.detail}"
            )
        else:
            state = "Applied" if seen.applied else "Pending"
            detail = seen.detail
            if seen.applied and seen.other_holders:  # e.g. a drain another incident put in force before this one
                detail += f"; held with {', '.join(seen.other_holders)}"
        observed_at = before.get("observedAt") if before.get("state") == state else stamp
        if state == "Applied" and before.get("state") != "Applied":
            note("LeverApplied", f"{seen.lever}: {detail}", seen.agent)
            seconds = _seconds(started_at, now)
            if seconds is not None:
                lever_timings.setdefault(f"{seen.agent}/{seen.lever}", seconds)
        if state == "Released" and before.get("state") != "Released":
            note("LeverReleased", f"{seen.lever}: {detail}", seen.agent)
        new_levers.append(
            LeverStatus(name=seen.lever, agent=seen.agent, state=state, observed_at=observed_at, detail=detail)
        )
    if resolved:
        not_contained = "never contained (the incident is resolved)"
    else:
        not_contained = "not contained; retried at every pass until it exists (a typo? fix spec.agents)"
        notes = [*(("AgentMissing", f"{why}: {not_contained}", agent) for agent, why in missing.items()), *notes]
    for event, message, agent in notes:
        # A failure or rollback that a re-assert pass finds again is not news: one entry, not one per pass.
        repeated = any(
            e.get("event") == event and e.get("message") == message and e.get("agent") == agent for e in timeline
        )
        if event in ONCE_EVENTS and repeated:
            continue
        note(event, message, agent)

    conditions = list(status.get("conditions") or [])

    def cond(type_: str, ok: bool, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type_, ok, reason, message, now=now, generation=generation)

    acting = f"acting on {', '.join(agents) or 'no agent yet'}"
    if missing:
        acting += f"; missing: {', '.join(missing)} (see AgentsMissing)"
    cond("Accepted", True, "Valid", acting)
    if missing:
        cond("AgentsMissing", True, "AgentNotFound", f"{'; '.join(missing.values())}: {not_contained}")
    elif find_condition(conditions, "AgentsMissing") is not None:
        cond("AgentsMissing", False, "AgentsFound", "every agent in spec.agents exists")
    if evidence:
        if not condition_is(conditions, "EvidenceCaptured"):
            note(
                "EvidenceCaptured",
                f"ConfigMap {evidence.get('configMap')} ({evidence.get('bytes')} bytes"
                + (", truncated to fit" if evidence.get("truncated") else "")
                + ")",
            )
        cond("EvidenceCaptured", True, "Captured", f"ConfigMap {evidence.get('configMap')}")
    elif not condition_is(conditions, "EvidenceCaptured"):
        cond("EvidenceCaptured", False, "Pending", "evidence is captured after shadow and revoke, before drain")
    held = [lv for lv in new_levers if lv.state != LeverState.RELEASED]
    if resolved:
        cond("Contained", False, "Released", "the incident is resolved; its levers are released")
        if not condition_is(conditions, "Resolved"):
            note("Resolved", "resolved; levers released unless another open incident holds them")
            timings["resolvedSeconds"] = _seconds(started_at, now)
        cond("Resolved", True, "Resolved", "resolved by spec.resolved")
    else:
        pending = [f"{lv.agent}/{lv.name.value}" for lv in held if lv.state != LeverState.APPLIED]
        if pending:
            cond("Contained", False, "LeversPending", f"not yet observed applied: {', '.join(pending)}")
        elif missing:
            applied = f"{len(held)} lever(s) observed applied on {', '.join(agents)}; " if held else ""
            absent = f"not contained: {', '.join(missing)} (see AgentsMissing)"
            cond("Contained", False, "AgentsMissing", applied + absent)
        elif not held:
            cond("Contained", False, "NoLeverHeld", "this incident holds no lever (its playbook contains nothing)")
        elif not evidence and any(lv.name in WAITS_FOR_EVIDENCE for lv in held):
            # The order is shadow and revoke, evidence, drain: an incident holding a lever that waits for the
            # evidence (even one another incident already put in force) is contained once it is captured too.
            cond("Contained", False, "EvidencePending", "its evidence is captured before its drain")
        else:
            if not condition_is(conditions, "Contained"):
                note("Contained", "every lever observed applied")
                timings.setdefault("containedSeconds", _seconds(started_at, now))
            cond("Contained", True, "LeversApplied", f"{len(held)} lever(s) observed applied")
        cond("Resolved", False, "Open", "set spec.resolved: true to release")
    if lever_timings:
        timings["levers"] = lever_timings
    timings = {k: v for k, v in timings.items() if v is not None}
    built = AgentIncidentStatus(
        observed_generation=generation,
        agents=agents,
        levers=new_levers,
        timeline=timeline,
        **({"timings": Timings.model_validate(timings)} if timings else {}),
        **({"evidence": EvidenceStatus.model_validate(evidence)} if evidence else {}),
        conditions=conditions,
        phase=derive_phase(conditions),
    )
    return {**status, **built.to_status()}


def invalid_incident_status(
    status: dict[str, Any], message: str, *, now: datetime, generation: int | None
) -> dict[str, Any]:
    conditions = set_condition(
        list(status.get("conditions") or []), "Accepted", False, "InvalidSpec", message, now=now, generation=generation
    )
    built = AgentIncidentStatus(observed_generation=generation, conditions=conditions, phase=derive_phase(conditions))
    return {**status, **built.to_status()}


__all__ = [
    "LeverSeen",
    "derive_phase",
    "incident_status",
    "invalid_incident_status",
    "micro_time",
    "plan_start",
    "rfc3339",
]
