"""Reconcile one AgentDeployment: gather → decide → act → report.

Two passes, each taking what it needs:

- :func:`contain_agent`, an incident's hot path: the levers the agent's open incidents ask for (their union)
  and an incident's rollback, nothing else;
- :func:`reconcile_agent`, every other cause (create, update, resume, the resync timer, after an incident's
  pass, a CLI call): pinning, rollback, wiring, the levers, promotion, pruning, readiness and the status.

Each action is "make X equal Y", so a pass over a converged agent issues no write. The agent's containment is
the union of its open incidents, recomputed on every pass.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tourniquet.adapters.kube import AGENTDEPLOYMENTS, AGENTINCIDENTS, CONFIGMAPS, WORKLOADS, KubeApi
from tourniquet.domain import agent as decide
from tourniquet.domain import bundles, names, wiring
from tourniquet.domain.conditions import rfc3339
from tourniquet.domain.containment import Containment, IncidentView, incident_view, plan_containment
from tourniquet.domain.gate import with_gate_status
from tourniquet.domain.readiness import with_readiness
from tourniquet.levers import registry
from tourniquet.levers.common import LeverContext, LeverObservation
from tourniquet.levers.registry import Phase
from tourniquet.models import AgentDeploymentSpec, Lever, RevisionVerdict
from tourniquet.reconcilers.agent_status import write_status
from tourniquet.reconcilers.consumers import claimed_by_others, wire
from tourniquet.reconcilers.gate import gate_pass
from tourniquet.reconcilers.readiness import readiness_pass
from tourniquet.reconcilers.revisions import create_bundle, promote_and_prune, set_verdict

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Children:
    """An agent's own objects as the operator's watch last delivered them; None: not seen (read them)."""

    control: dict[str, Any] | None = None  # a lever plans on it, its write guarded by the resourceVersion
    policy: dict[str, Any] | None = None  # (see levers.common.converge)
    bundles: list[dict[str, Any]] | None = None  # the bundle revisions' ConfigMaps
    consumers: dict[tuple[str, str], dict[str, Any]] | None = None  # as a pass moments ago left them (not watched)


ChildrenSeen = Callable[[str, str], Children]


def unseen(namespace: str, name: str) -> Children:
    """No watch of the children: every pass reads them."""
    return Children()


@dataclass
class AgentReport:
    agent: str
    namespace: str
    ready: bool = True
    reason: str = ""
    message: str = ""
    active_revision: int | None = None
    actions: list[str] = field(default_factory=list)
    levers: dict[Lever, LeverObservation] = field(default_factory=dict)
    drift: list[str] = field(default_factory=list)  # levers put back after someone undid them
    rollback: str | None = None  # what a rollback did (incident timeline)
    rollback_refused: str | None = None  # why an incident's rollback could not happen
    rollback_by: list[str] = field(default_factory=list)  # the incidents asking for the rollback
    spec: AgentDeploymentSpec | None = None
    body: dict[str, Any] | None = None  # the agent: as read, or with the status this pass wrote
    consumers: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # as the pass left them
    control: dict[str, Any] | None = None  # the control ConfigMap, as the pass left it
    policy: dict[str, Any] | None = None  # the NetworkPolicy, as the pass left it
    bundle_data: dict[str, dict[str, str]] = field(default_factory=dict)  # bundle ConfigMaps read: name -> data


@dataclass
class AgentWorld:
    """Everything observed about one agent before deciding."""

    stored: list[bundles.StoredRevision]
    consumers: dict[tuple[str, str], dict[str, Any] | None]
    control: dict[str, Any] | None
    policy: dict[str, Any] | None
    bundle_data: dict[str, dict[str, str]] = field(default_factory=dict)  # ConfigMap name -> data


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ParsedAgent:
    """An agent's spec as one read of it validated (None, and why, when invalid). An incident's pass parses each
    agent it read once and hands this to both of its containment rounds."""

    spec: AgentDeploymentSpec | None
    invalid: str | None

    @functools.cached_property
    def sha256(self) -> str:
        """The bundle's hash: computed when a pass first plans on the revisions (`_plan`), not on the way to
        containing the agent, and once however many rounds plan on it."""
        assert self.spec is not None
        return bundles.bundle_sha256(self.spec.bundle)


def parse_agent(body: dict[str, Any]) -> ParsedAgent:
    """The agent's spec validated; its bundle is hashed only when a pass plans on it (`_plan`)."""
    return ParsedAgent(*decide.parse_spec(body.get("spec")))


async def gather(
    api: KubeApi, namespace: str, name: str, spec: AgentDeploymentSpec, *, revisions: str, seen: ChildrenSeen
) -> AgentWorld:
    """Read the agent's consumers; its stored bundle revisions `revisions`: "listed" (read now), "seen" (as the
    watch last delivered them, read when it has not) or "watched" (as the watch delivered them, none when it has
    not: never a read); the control ConfigMap and NetworkPolicy are as the watch last delivered them (`seen`)."""
    children = seen(namespace, name)

    async def stored_revisions() -> tuple[list[bundles.StoredRevision], dict[str, dict[str, str]]]:
        cms = children.bundles if revisions in ("seen", "watched") else None
        if cms is None and revisions == "watched":
            return [], {}
        if cms is None:
            cms = await api.list(CONFIGMAPS, namespace, label_selector=names.bundle_selector(name))
        stored = [s for s in (bundles.stored_revision_from_configmap(cm) for cm in cms) if s is not None]
        return stored, {cm["metadata"]["name"]: cm.get("data") or {} for cm in cms}

    async def consumer(kind: str, cname: str) -> dict[str, Any] | None:
        known = (children.consumers or {}).get((kind, cname))
        return known if known is not None else await api.get_or_none(WORKLOADS[kind], namespace, cname)

    (stored, bundle_data), *workloads = await asyncio.gather(
        stored_revisions(), *(consumer(ref.kind.value, ref.name) for ref in spec.consumers)
    )
    return AgentWorld(
        bundle_data=bundle_data,
        stored=stored,
        consumers={(ref.kind.value, ref.name): w for ref, w in zip(spec.consumers, workloads, strict=True)},
        control=children.control,
        policy=children.policy,
    )


async def list_incidents(api: KubeApi, namespace: str) -> list[IncidentView]:
    views = [incident_view(body) for body in await api.list(AGENTINCIDENTS, namespace)]
    return [v for v in views if v is not None]


def _highest_seen(status: dict[str, Any]) -> int:
    bundle = status.get("bundle") or {}
    seen = [r.get("revision", 0) for r in bundle.get("history") or []]
    return max([0, bundle.get("revision") or 0, bundle.get("specRevision") or 0, *seen])


def _current_revision(status: dict[str, Any], world: AgentWorld) -> int | None:
    """What runs now: the revision the consumers' templates are wired to (an incident's rollback rewires them before
    the agent's status says so); without consumers, or none wired yet, what the status says."""
    wired = [wiring.wired_revision(w) for w in world.consumers.values() if w]
    revision = next((r for r in wired if r is not None), None) or (status.get("bundle") or {}).get("revision")
    return int(revision) if revision else None


async def _problems(
    api: KubeApi, namespace: str, name: str, spec: AgentDeploymentSpec, world: AgentWorld
) -> list[str]:
    """What keeps the agent from being acted on: a consumer missing, or wired by another agent."""
    missing = [f"{kind} {cname}" for (kind, cname), w in world.consumers.items() if w is None]
    return decide.spec_problems(spec, missing, namespace) + await claimed_by_others(
        api, namespace, name, world.consumers
    )


def _plan(
    parsed: ParsedAgent, status: dict[str, Any], world: AgentWorld, containment: Containment
) -> decide.BundlePlan:
    assert parsed.spec is not None
    return decide.plan_bundle(
        parsed.spec,
        world.stored,
        _highest_seen(status),
        current=_current_revision(status, world),
        containment=containment,
        sha256=parsed.sha256,
    )


async def contain_agent(
    api: KubeApi,
    body: dict[str, Any],
    parsed: ParsedAgent,
    incidents: list[IncidentView],
    upstream: dict[str, AgentDeploymentSpec],
    *,
    seen: ChildrenSeen = unseen,
) -> AgentReport | None:
    """Apply what the agent's open incidents ask of it (the union of their levers, and a rollback one of them asks
    for) and observe it; nothing else: no pinning, promotion, pruning, readiness or status (reconcile_agent's).
    None when the agent cannot be acted on (an invalid spec, a consumer missing or another agent's): its own
    reconcile refuses it and says why. `parsed`: `body` parsed (:func:`parse_agent`)."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    if parsed.spec is None:
        return None
    spec, status = parsed.spec, body.get("status") or {}
    containment = plan_containment(name, spec, incidents, upstream)
    # The revisions decide a rollback; otherwise what the watch holds of them is only what the evidence records
    # (the running bundle's data), not worth a read on the way to Contained.
    revisions = "seen" if containment.rollbacks else "watched"
    world = await gather(api, namespace, name, spec, revisions=revisions, seen=seen)
    if await _problems(api, namespace, name, spec, world):
        return None
    report = AgentReport(name, namespace, spec=spec, body=body, bundle_data=world.bundle_data)
    plan, stored = None, list(world.stored)
    if containment.rollbacks:  # an incident's rollback is containment: the revision it takes out is marked bad first
        plan = _plan(parsed, status, world, containment)
        for revision in plan.mark_bad:
            stored = await set_verdict(api, namespace, stored, revision, RevisionVerdict.BAD)
            report.actions.append(f"Marked bundle revision {revision} bad")
    await _contain(api, report, spec, world, containment, plan, stored, _current_revision(status, world))
    _log_actions(report)
    return report


async def _contain(
    api: KubeApi,
    report: AgentReport,
    spec: AgentDeploymentSpec,
    world: AgentWorld,
    containment: Containment,
    plan: decide.BundlePlan | None,
    stored: list[bundles.StoredRevision],
    current: int | None,
) -> tuple[dict[str, Any], dict[str, Any], bundles.StoredRevision | None]:
    """The levers applied before the rollout (shadow and revoke, at once), then the consumers rolled to the active
    revision, then the levers applied after it (drain: it kills pods and their memory), or restore what a drain
    recorded (see levers.registry). Returns the control ConfigMap, the NetworkPolicy and the active revision, as
    observed."""
    namespace, name = report.namespace, report.agent
    owner = names.owner_reference("AgentDeployment", name, (report.body or {})["metadata"]["uid"])
    consumers: dict[tuple[str, str], dict[str, Any]] = {k: w for k, w in world.consumers.items() if w}
    ctx = LeverContext(
        api, namespace, name, spec, containment, owner, world.control, world.policy, consumers, actions=report.actions
    )
    await registry.apply_phase(ctx, Phase.BEFORE_ROLLOUT)
    active = next((r for r in stored if plan is not None and r.revision == plan.active_revision), None)
    if active is not None:
        for ref in spec.consumers:
            key = (ref.kind.value, ref.name)
            patch = wiring.plan_wiring_patch(
                consumers[key],
                agent=name,
                revision=active.revision,
                bundle_cm=active.name,
                control_cm=names.control_configmap(name),
            )
            if patch is not None:
                consumers[key] = await wire(api, namespace, name, ref.kind.value, consumers[key], patch)
                report.actions.append(f"Wired {ref.kind.value} {ref.name} to bundle revision {active.revision}")
        if plan is not None and plan.reason == "RolledBack" and current != active.revision:
            report.rollback = f"rolled back from revision {current} to {active.revision}"
    if plan is not None and plan.reason == "RollbackRefused" and containment.rollbacks:
        report.rollback_refused = plan.message
    report.rollback_by = [incident for incident, _ in containment.rollbacks]
    await registry.apply_phase(ctx, Phase.AFTER_ROLLOUT)
    control, policy = ctx.control or {}, ctx.policy or {}
    report.consumers, report.control, report.policy = consumers, control, policy
    report.levers = registry.observe(ctx)
    report.drift = [message for seen in report.levers.values() for message in seen.drift]
    report.active_revision = active.revision if active else None
    return control, policy, active


async def reconcile_agent(
    api: KubeApi,
    body: dict[str, Any],
    incidents: list[IncidentView],
    *,
    seen: ChildrenSeen = unseen,
    now: datetime | None = None,
) -> AgentReport:
    """Make the agent's children match its spec and its open incidents; report what is observed in its status."""
    now = now or _now()
    meta = body["metadata"]
    name, namespace, generation = meta["name"], meta["namespace"], meta.get("generation")
    status = body.get("status") or {}

    parsed = parse_agent(body)
    spec = parsed.spec
    if spec is None:
        return await _refuse(api, body, "InvalidSpec", parsed.invalid or "invalid spec", now)
    upstream = await _upstream(api, namespace, spec, incidents)
    world = await gather(api, namespace, name, spec, revisions="listed", seen=seen)
    problems = await _problems(api, namespace, name, spec, world)
    if problems:
        return await _refuse(api, body, "InvalidSpec", "; ".join(problems), now)

    containment = plan_containment(name, spec, incidents, upstream)
    plan = _plan(parsed, status, world, containment)
    current = _current_revision(status, world)
    owner = names.owner_reference("AgentDeployment", name, meta["uid"])
    report = AgentReport(name, namespace, spec=spec, body=body, bundle_data=world.bundle_data)
    stored = list(world.stored)

    # 1. Pin spec.bundle as an immutable ConfigMap (pinning is not rolling out: a frozen agent pins too).
    if plan.create:
        stored.append(await create_bundle(api, namespace, name, plan, owner))
        report.bundle_data[names.bundle_configmap(name, plan.spec_revision)] = plan.data
        report.actions.append(f"Pinned bundle revision {plan.spec_revision}")
    # 2. Record before changing: a revision taken out by an incident is marked bad first.
    for revision in plan.mark_bad:
        stored = await set_verdict(api, namespace, stored, revision, RevisionVerdict.BAD)
        report.actions.append(f"Marked bundle revision {revision} bad")
    # 3. The redeploy gate: an unproven revision rolls out only once its evaluation Job passed (reconcilers.gate).
    gated = await gate_pass(api, body, spec, plan, stored, current, containment, now, report.actions)
    stored = gated.stored if gated.stored is not None else stored
    if gated.hold:
        plan.active_revision = current
    # 4. The levers and the rollout, drain last.
    control, _, active = await _contain(api, report, spec, world, containment, plan, stored, current)
    # 5. Promotion on evidence, then pruning beyond the history limit.
    stored = await promote_and_prune(api, namespace, spec, status, stored, active, containment, now, report.actions)

    new_status = decide.agent_status(
        status,
        plan=plan,
        stored_after=stored,
        consumers=[
            {
                "kind": ref.kind.value,
                "name": ref.name,
                "revision": wiring.wired_revision(report.consumers[(ref.kind.value, ref.name)]),
            }
            for ref in spec.consumers
        ],
        containment=_containment_status(report, containment, now) if containment.incidents else None,
        contained=_contained_condition(report, containment),
        incidents=containment.incidents,
        now=now,
        generation=generation,
    )
    new_status = with_gate_status(new_status, gated, now=now, generation=generation)
    checklist = await readiness_pass(
        api,
        body,
        spec,
        control=control,
        consumers=report.consumers,
        active_revision=active.revision if active else None,
        owner=owner,
        now=now,
    )
    new_status = with_readiness(new_status, checklist)
    await write_status(api, body, new_status)
    report.body = {**body, "status": new_status}
    _log_actions(report)
    ready = next(c for c in new_status["conditions"] if c["type"] == "Ready")
    report.ready, report.reason, report.message = ready["status"] == "True", ready["reason"], ready["message"]
    return report


def _log_actions(report: AgentReport) -> None:
    for action in report.actions:
        log.info("%s (agent %s/%s)", action, report.namespace, report.agent)


async def _upstream(
    api: KubeApi, namespace: str, spec: AgentDeploymentSpec, incidents: list[IncidentView]
) -> dict[str, AgentDeploymentSpec]:
    """The specs of the agents this one depends on, when an open cascading incident names one."""
    wanted = {d.name for d in spec.depends_on} & {
        a for i in incidents if i.open and i.spec.cascade for a in i.spec.agents
    }
    result = {}
    for name in sorted(wanted):
        body = await api.get_or_none(AGENTDEPLOYMENTS, namespace, name)
        parsed = decide.parse_spec(body.get("spec"))[0] if body else None
        if parsed is not None:
            result[name] = parsed
    return result


async def _refuse(api: KubeApi, body: dict[str, Any], reason: str, message: str, now: datetime) -> AgentReport:
    """Touch nothing but the status, which says what is wrong."""
    meta = body["metadata"]
    new_status = decide.invalid_status(
        body.get("status") or {}, reason, message, now=now, generation=meta.get("generation")
    )
    if await write_status(api, body, new_status):
        log.warning("Refused AgentDeployment %s/%s: %s", meta["namespace"], meta["name"], message)
    return AgentReport(meta["name"], meta["namespace"], False, reason, message)


def _containment_status(report: AgentReport, containment: Containment, now: datetime) -> dict[str, Any]:
    levers = []
    for lever, seen in report.levers.items():
        if not seen.holders:
            continue
        levers.append(
            {
                "name": lever.value,
                "state": "Applied" if seen.applied else "Pending",
                "detail": seen.detail,
                "incidents": seen.holders,
            }
        )
    return {"incidents": list(containment.incidents), "levers": levers}


def _contained_condition(report: AgentReport, containment: Containment) -> tuple[bool, str, str]:
    held = [seen for seen in report.levers.values() if seen.holders]
    if not containment.incidents:
        return False, "NoOpenIncident", "no open incident holds a lever on this agent"
    if not held:
        return False, "NoLeverHeld", f"incident(s) {', '.join(containment.incidents)} hold no lever"
    pending = [s.lever.value for s in held if not s.applied]
    if pending:
        return False, "LeversPending", f"not yet observed applied: {', '.join(pending)}"
    return True, "LeversApplied", "; ".join(f"{s.lever.value}: {s.detail}" for s in held)


__all__ = [
    "AgentReport",
    "LeverObservation",
    "ParsedAgent",
    "contain_agent",
    "list_incidents",
    "reconcile_agent",
    "rfc3339",
]
