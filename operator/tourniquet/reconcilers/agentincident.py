"""Reconcile one AgentIncident: validate, contain its agents in order, capture evidence, report.

Containment itself is done by each agent's reconcile (the union of its open incidents); this
reconcile drives those in the right order — shadow and revoke, then evidence, then drain — and
turns what they observed into the incident's status and timeline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tourniquet import observability
from tourniquet.adapters.kube import AGENTDEPLOYMENTS, AGENTINCIDENTS, KubeApi
from tourniquet.adapters.ledger import Ledgers
from tourniquet.domain.containment import IncidentView, incident_problems, parse_incident
from tourniquet.domain.incident import LeverSeen, incident_status, invalid_incident_status, micro_time, plan_start
from tourniquet.domain.names import ANNOTATION_OPENED_AT
from tourniquet.domain.undo import following
from tourniquet.models import AgentIncidentSpec
from tourniquet.reconcilers.agentdeployment import AgentReport, Children, ParsedAgent, list_incidents, parse_agent
from tourniquet.reconcilers.agents import Agents
from tourniquet.reconcilers.events import post_events_later
from tourniquet.reconcilers.evidence import capture_evidence
from tourniquet.reconcilers.undo import count_compensations, merge_undo, reconcile_undo

log = logging.getLogger(__name__)


@dataclass
class IncidentReport:
    name: str
    accepted: bool
    message: str = ""
    status: dict[str, Any] = field(default_factory=dict)
    agents: dict[str, AgentReport] = field(default_factory=dict)
    written: dict[str, Any] | None = None  # the incident as the status write returned it (None: not written)
    retry: str | None = None  # something this pass could not read (the ledger): retry it with backoff
    following: bool = False  # resolved, but its compensation Job is under way: keep reading it


async def write_incident_status(
    api: KubeApi, body: dict[str, Any], new_status: dict[str, Any]
) -> dict[str, Any] | None:
    """The incident as written, or None when its status is already `new_status`."""
    if new_status == (body.get("status") or {}):
        return None
    meta = body["metadata"]
    return await api.patch(
        AGENTINCIDENTS, meta["namespace"], meta["name"], {"status": new_status}, subresource="status"
    )


async def reconcile_incident(
    api: KubeApi,
    body: dict[str, Any],
    agents: Agents,
    *,
    now: datetime | None = None,
    notes: list[tuple[str, str, str | None]] | None = None,
    others: list[IncidentView] | None = None,
    ledgers: Ledgers | None = None,
) -> IncidentReport:
    """`others`: the namespace's incidents as the operator's index holds them; read from the API if None.
    `ledgers`: the operator's open ledgers, which the undo reads (None: opened for the pass).
    `agents` contains them, and reconciles each in full once containment is quiet (on `agents.lane`)."""
    async with agents.lane.containment_pass():
        return await _reconcile_incident(api, body, agents, now=now, notes=notes, others=others, ledgers=ledgers)


async def _reconcile_incident(
    api: KubeApi,
    body: dict[str, Any],
    agents: Agents,
    *,
    now: datetime | None,
    notes: list[tuple[str, str, str | None]] | None,
    others: list[IncidentView] | None,
    ledgers: Ledgers | None,
) -> IncidentReport:
    seen = now or _now()
    meta = body["metadata"]
    name, namespace, generation = meta["name"], meta["namespace"], meta.get("generation")
    status = body.get("status") or {}
    deleting = bool(meta.get("deletionTimestamp"))

    spec, invalid = parse_incident(body)
    if spec is None:
        return await _refuse(api, body, invalid or "invalid spec")
    read_after = agents.mark()  # an agent whose own pass finishes after this is read again when contained
    agent_bodies = dict(
        zip(
            spec.agents,
            await asyncio.gather(*(api.get_or_none(AGENTDEPLOYMENTS, namespace, a) for a in spec.agents)),
            strict=True,
        )
    )
    # Fail toward containment: an agent that does not exist (a typo, not created yet, being deleted) does not
    # keep the others from being contained; it is reported (AgentsMissing) and retried at every pass.
    missing = {n: why for n, b in agent_bodies.items() if (why := _missing(n, b, namespace)) is not None}
    # Each agent read is parsed once for the whole pass (both containment rounds plan on it).
    parsed: dict[str, ParsedAgent] = {n: parse_agent(b) for n, b in agent_bodies.items() if b and n not in missing}
    agent_specs = {n: (parsed[n].spec if n in parsed else None) for n in agent_bodies}
    problems = incident_problems(spec, agent_specs, namespace)
    problems += [
        f"AgentDeployment {n} has an invalid spec; see its Ready condition"
        for n in agent_bodies
        if n not in missing and agent_specs[n] is None
    ]
    if problems:
        return await _refuse(api, body, "; ".join(problems))

    evidence = status.get("evidence") if (status.get("evidence") or {}).get("capturedAt") else None
    me = IncidentView(name, spec, evidence_captured=evidence is not None, deleting=deleting, valid=True)
    if others is None:
        others = await list_incidents(api, namespace)
    upstream = {n: s for n, s in agent_specs.items() if s is not None}
    named = [a for a in spec.agents if a not in missing]
    cascaded = await _cascade_targets(api, namespace, spec) if spec.cascade else {}
    targets = named + sorted(cascaded)
    # Agents it acted on and no longer names: contained without it now (not at their next resync), so what it
    # held there is released, and shown Released once.
    dropped = [a for a in status.get("agents") or [] if a not in targets and a not in missing]
    # The others that can claim one of these agents (naming one, or cascading), this one last: each agent's
    # containment plans on those (plan_containment), and a burst's passes do not each scan all of the namespace's.
    acting_on = {*targets, *dropped}
    views = [v for v in others if v.name != name and (v.spec.cascade or not acting_on.isdisjoint(v.spec.agents))]
    views.append(me)
    agent_bodies.update(cascaded)
    agent_bodies.update(
        zip(
            dropped,
            await asyncio.gather(*(api.get_or_none(AGENTDEPLOYMENTS, namespace, a) for a in dropped)),
            strict=True,
        )
    )

    async def contain_all(
        current: list[IncidentView], only: list[str], seen: dict[str, AgentReport] | None = None
    ) -> dict[str, AgentReport]:
        """Contain the agents in `only`; `seen`: what the first round observed of them (the drain round plans on
        its writes, not on the watch's copies, which may not have caught up yet, and reads nothing again; every
        write is still guarded by the resourceVersion it was planned on)."""

        def children(namespace: str, agent: str) -> Children:
            first = (seen or {}).get(agent)
            watched = agents.seen(namespace, agent)
            if first is None:
                return watched
            return dataclasses.replace(
                watched, control=first.control, policy=first.policy, consumers=first.consumers
            )

        bodies = {a: b for a in only if (b := agent_bodies.get(a)) and not b["metadata"].get("deletionTimestamp")}
        for agent, body in bodies.items():
            if agent not in parsed:  # cascaded to, or no longer named
                parsed[agent] = parse_agent(body)
        results = await asyncio.gather(
            *(
                agents.contain(body, parsed[agent], current, upstream, children, read_after=read_after)
                for agent, body in bodies.items()
            )
        )
        return {r.agent: r for r in results if r is not None}

    start = plan_start(
        status.get("timings") or {},
        opened_at=(meta.get("annotations") or {}).get(ANNOTATION_OPENED_AT),
        created=meta.get("creationTimestamp"),
        first_seen=seen,
    )

    def compute(previous: dict[str, Any], reports: dict[str, AgentReport], notes: list[Any]) -> dict[str, Any]:
        return incident_status(
            previous,
            start=start,
            generation=generation,
            agents=targets,
            levers=_levers_seen(name, spec, previous, reports),
            resolved=spec.resolved,
            evidence=evidence,
            notes=notes,
            now=now or _now(),
            missing={} if deleting else missing,
        )

    # Shadow and revoke first (drain waits for the evidence), then evidence, then drain. The timeline
    # records each phase when it completed.
    reports = await contain_all(views, targets + dropped)
    if me.open and evidence is None and not deleting and any(a in reports for a in named):
        status = compute(status, reports, [])
        evidence = await capture_evidence(
            api, body, {a: reports[a] for a in spec.agents if a in reports}, captured_at=micro_time(_now())
        )
        me = dataclasses.replace(me, evidence_captured=True)
        views = [*views[:-1], me]
        waiting = [a for a, r in reports.items() if any(seen.pending for seen in r.levers.values())]
        status = compute(status, reports, [])  # the evidence, in its place in the timeline
        if waiting:
            reports.update(await contain_all(views, waiting, seen=reports))

    report = IncidentReport(name, True, agents=reports)
    if deleting:
        _reconcile_changed(agents, namespace, reports, changed=True)
        return report
    extra = list(notes or [])
    for agent, agent_report in reports.items():
        for observed in agent_report.levers.values():  # a lever this incident holds, put back after someone undid it
            if name in observed.holders:
                extra += [("DriftRepaired", message, agent) for message in observed.drift]
        if agent_report.rollback:
            extra.append(("RolledBack", agent_report.rollback, agent))
        if agent_report.rollback_refused:
            extra.append(("Failed", agent_report.rollback_refused, agent))
    # The undo (blast radius, plan, the approved plan's Job) of an open incident, after its containment.
    # A resolved incident is read on only while its compensation is under way, to report how it ends.
    undo = None
    if not spec.resolved or following(status):
        undo = await reconcile_undo(
            api, body, {a: agent_bodies.get(a) for a in named}, now=now or _now(), ledgers=ledgers
        )
        if undo is not None:
            extra += undo.notes
            report.retry = undo.retry
    new_status = compute(status, reports, extra)
    if undo is not None:
        new_status = merge_undo(new_status, undo)
        report.following = spec.resolved and following(new_status)
    report.written = await write_incident_status(api, body, new_status)
    if report.written:
        if undo is not None:
            count_compensations(undo)
        already = len((body.get("status") or {}).get("timeline") or [])
        post_events_later(api, body, new_status["timeline"][already:], agents.lane)
        observability.observe_incident_timings(body.get("status") or {}, new_status)
    report.status = new_status
    _reconcile_changed(agents, namespace, reports, changed=report.written is not None)
    return report


def _reconcile_changed(agents: Agents, namespace: str, reports: dict[str, AgentReport], *, changed: bool) -> None:
    """Each agent this pass acted on, or whose levers it saw change, is reconciled in full once containment is
    quiet: its status follows what was observed here."""
    for agent, agent_report in reports.items():
        if changed or agent_report.actions or agent_report.drift:
            agents.reconcile_soon(namespace, agent)


def _now() -> datetime:
    return datetime.now(UTC)


def _missing(name: str, body: dict[str, Any] | None, namespace: str) -> str | None:
    """Why an agent an incident names cannot be contained now, or None when it can be."""
    if body is None:
        return f"AgentDeployment {name} not found in namespace {namespace}"
    if body["metadata"].get("deletionTimestamp"):
        return f"AgentDeployment {name} is being deleted"
    return None


def _levers_seen(
    name: str, spec: AgentIncidentSpec, status: dict[str, Any], reports: dict[str, AgentReport]
) -> list[LeverSeen]:
    """The levers this incident holds (or held: once resolved, or taken out of its levers) on each agent, as
    observed."""
    seen: list[LeverSeen] = []
    held_before = {(lv.get("agent"), lv.get("name")) for lv in status.get("levers") or []}
    for agent, report in reports.items():
        for lever, observation in report.levers.items():
            holds = name in observation.holders
            if not holds and (agent, lever.value) not in held_before:
                continue
            others = tuple(h for h in observation.holders if h != name)
            seen.append(
                LeverSeen(
                    agent,
                    lever.value,
                    observation.applied and holds,
                    observation.detail,
                    others,
                    observation.pending,
                    held=holds,
                )
            )
    return seen


async def _cascade_targets(api: KubeApi, namespace: str, spec: AgentIncidentSpec) -> dict[str, dict[str, Any]]:
    """Agents that depend on an incident agent (by name): they get the (lighter) cascade containment."""
    named = set(spec.agents)
    result = {}
    for body in await api.list(AGENTDEPLOYMENTS, namespace):
        depends = {d.get("name") for d in (body.get("spec") or {}).get("dependsOn") or []}
        if depends & named and body["metadata"]["name"] not in named:
            result[body["metadata"]["name"]] = body
    return result


async def _refuse(api: KubeApi, body: dict[str, Any], message: str) -> IncidentReport:
    """An incident that cannot be acted on touches nothing; its status says why."""
    meta = body["metadata"]
    new_status = invalid_incident_status(
        body.get("status") or {}, message, now=_now(), generation=meta.get("generation")
    )
    written = await write_incident_status(api, body, new_status)
    if written:
        log.warning("Refused AgentIncident %s/%s: %s", meta["namespace"], meta["name"], message)
    return IncidentReport(meta["name"], False, message, new_status, written=written)


async def release_deleted_incident(
    api: KubeApi, body: dict[str, Any], agents: Agents, others: list[IncidentView] | None = None
) -> IncidentReport:
    """The incident is being deleted: recompute its agents without it (a no-op if it held nothing)."""
    deleting = {
        **body,
        "metadata": {
            **body["metadata"],
            "deletionTimestamp": body["metadata"].get("deletionTimestamp") or micro_time(_now()),
        },
    }
    return await reconcile_incident(api, deleting, agents, others=others)
