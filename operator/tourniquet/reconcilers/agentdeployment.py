"""Reconcile one AgentDeployment: gather → decide → act → report.

Every event (create, update, resume, the resync timer, an incident, a CLI call) runs this same
function. Each action is "make X equal Y", so a pass over a converged agent issues no write. The
agent's containment is the union of its open incidents, recomputed on every pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tourniquet.adapters.kube import (
    AGENTDEPLOYMENTS,
    AGENTINCIDENTS,
    CONFIGMAPS,
    NETWORKPOLICIES,
    WORKLOADS,
    ApiError,
    KubeApi,
)
from tourniquet.domain import agent as decide
from tourniquet.domain import bundles, names, network, wiring
from tourniquet.domain.conditions import rfc3339
from tourniquet.domain.containment import Containment, IncidentView, incident_view, plan_containment
from tourniquet.domain.gate import with_gate_status
from tourniquet.domain.generations import PerGeneration
from tourniquet.domain.readiness import with_readiness
from tourniquet.levers import control as control_lever
from tourniquet.levers import drain as drain_lever
from tourniquet.levers import egress as egress_lever
from tourniquet.levers.common import LeverObservation
from tourniquet.models import AgentDeploymentSpec, Lever, RevisionVerdict
from tourniquet.reconcilers.agent_status import write_status, write_status_later
from tourniquet.reconcilers.gate import gate_pass
from tourniquet.reconcilers.readiness import readiness_pass

log = logging.getLogger(__name__)


@dataclass
class AgentReport:
    agent: str
    namespace: str
    ready: bool
    reason: str
    message: str
    active_revision: int | None = None
    actions: list[str] = field(default_factory=list)
    levers: dict[Lever, LeverObservation] = field(default_factory=dict)
    drift: list[str] = field(default_factory=list)  # levers put back after someone undid them
    rollback: str | None = None  # what a rollback did (incident timeline)
    rollback_refused: str | None = None  # why an incident's rollback could not happen
    spec: AgentDeploymentSpec | None = None
    body: dict[str, Any] | None = None  # the agent with the status this pass computed
    world: AgentWorld | None = None  # the children as the API server returned them after this pass


@dataclass
class AgentWorld:
    """Everything observed about one agent before deciding."""

    stored: list[bundles.StoredRevision]
    consumers: dict[tuple[str, str], dict[str, Any] | None]
    control: dict[str, Any] | None
    policy: dict[str, Any] | None
    bundle_data: dict[str, dict[str, str]] = field(default_factory=dict)  # ConfigMap name -> data
    remembered: bool = False  # control and policy are this process's last copies, not read now


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _KnownBundles:
    """The bundle revisions this process last saw stored for one agent, and the status they went with."""

    status_key: str
    stored: list[bundles.StoredRevision]
    bundle_data: dict[str, dict[str, str]]


# Bundle ConfigMaps change only through this operator's passes, and every such change is reported in the
# agent's status. So while an agent's generation and status.bundle are what a pass here left them, its
# stored revisions are what that pass saw, and an incident pass can skip listing them (a label-selected
# list scans the namespace on the API server). A status written by anyone else misses, and reads again.
_known_bundles: dict[tuple[str, str, str], _KnownBundles] = {}


@dataclass(frozen=True)
class _ParsedSpec:
    spec: AgentDeploymentSpec | None
    invalid: str | None
    identity: tuple[dict[str, str], str] | None  # the bundle's data and sha256


# A pass does not re-validate an agent's spec and re-hash its bundle while its generation is the same.
_parsed_specs: PerGeneration[_ParsedSpec] = PerGeneration()


def parse_agent(body: dict[str, Any]) -> _ParsedSpec:
    def derive() -> _ParsedSpec:
        spec, invalid = decide.parse_spec(body.get("spec"))
        return _ParsedSpec(spec, invalid, decide.bundle_identity(spec) if spec is not None else None)

    return _parsed_specs.get(body, derive)


def _status_key(generation: Any, status: dict[str, Any]) -> str:
    return json.dumps([generation, status.get("bundle")], sort_keys=True)


# The control ConfigMap and the NetworkPolicy are the operator's alone. The copies the last pass here got
# back from the API server let an incident pass write them without reading first: each write carries its
# copy's resourceVersion, so a change by anyone else since makes it fail (409) and the lever reads and plans
# again. A copy never stands in for an observation: a lever with nothing to write reads what is there.
_known_children: dict[tuple[str, str, str], tuple[dict[str, Any] | None, dict[str, Any] | None]] = {}


def forget_agent(namespace: str, name: str) -> None:
    for cache in (_known_bundles, _known_children):
        for key in [k for k in cache if k[:2] == (namespace, name)]:
            del cache[key]


async def gather(
    api: KubeApi,
    namespace: str,
    name: str,
    spec: AgentDeploymentSpec,
    known: _KnownBundles | None = None,
    children: tuple[dict[str, Any] | None, dict[str, Any] | None] | None = None,
) -> AgentWorld:
    """Read the agent's children; the stored bundle revisions come from `known`, the control ConfigMap and
    NetworkPolicy from `children` (the last pass's copies), when given."""

    async def stored_revisions() -> tuple[list[bundles.StoredRevision], dict[str, dict[str, str]]]:
        if known is not None:
            return list(known.stored), dict(known.bundle_data)
        cms = await api.list(CONFIGMAPS, namespace, label_selector=names.bundle_selector(name))
        stored = [s for s in (bundles.stored_revision_from_configmap(cm) for cm in cms) if s is not None]
        return stored, {cm["metadata"]["name"]: cm.get("data") or {} for cm in cms}

    async def control_and_policy() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        if children is not None:
            return children
        return await asyncio.gather(
            api.get_or_none(CONFIGMAPS, namespace, names.control_configmap(name)),
            api.get_or_none(NETWORKPOLICIES, namespace, names.network_policy(name)),
        )

    (stored, bundle_data), (control, policy), *workloads = await asyncio.gather(
        stored_revisions(),
        control_and_policy(),
        *(api.get_or_none(WORKLOADS[ref.kind.value], namespace, ref.name) for ref in spec.consumers),
    )
    return AgentWorld(
        bundle_data=bundle_data,
        stored=stored,
        consumers={(ref.kind.value, ref.name): w for ref, w in zip(spec.consumers, workloads, strict=True)},
        control=control,
        policy=policy,
        remembered=children is not None,
    )


async def list_incidents(api: KubeApi, namespace: str) -> list[IncidentView]:
    views = [incident_view(body) for body in await api.list(AGENTINCIDENTS, namespace)]
    return [v for v in views if v is not None]


def _highest_seen(status: dict[str, Any]) -> int:
    bundle = status.get("bundle") or {}
    seen = [r.get("revision", 0) for r in bundle.get("history") or []]
    return max([0, bundle.get("revision") or 0, bundle.get("specRevision") or 0, *seen])


def _current_revision(status: dict[str, Any], world: AgentWorld) -> int | None:
    """What runs now: the status says; after a lost status, the consumers' templates do."""
    revision = (status.get("bundle") or {}).get("revision")
    if revision:
        return int(revision)
    wired = [wiring.wired_revision(w) for w in world.consumers.values() if w]
    return next((r for r in wired if r is not None), None)


async def reconcile_agent_deployment(
    api: KubeApi,
    body: dict[str, Any],
    *,
    incidents: list[IncidentView] | None = None,
    upstream: dict[str, AgentDeploymentSpec] | None = None,
    now: datetime | None = None,
    world: AgentWorld | None = None,
    defer_status: bool = False,
    known_bundles: bool = False,
    status_later: bool = False,
) -> AgentReport:
    """Make the agent's children match its spec and its open incidents; report what is observed.

    `world`: the children as a pass moments ago left them (skips reading them again).
    `defer_status`: skip the status write when a drain waits for evidence (a second pass follows).
    `status_later`: write the status once the containment burst is over (see agent_status); the caller
    holds the agent's lock and has flushed any status pending for it.
    `known_bundles`: take the stored bundle revisions from this process's last pass when the agent's
    generation and status.bundle show nothing changed since (incident passes: speed matters).
    """
    now = now or _now()
    meta = body["metadata"]
    name, namespace, generation = meta["name"], meta["namespace"], meta.get("generation")
    status = body.get("status") or {}

    parsed = parse_agent(body)
    spec, invalid = parsed.spec, parsed.invalid
    if spec is None:
        return await _refuse(api, body, "InvalidSpec", invalid or "invalid spec", now)
    if incidents is None:
        incidents = await list_incidents(api, namespace)
    if upstream is None:
        upstream = await _upstream(api, namespace, spec, incidents)

    cache_key = (namespace, name, str(meta.get("uid")))
    if world is None:
        known = _known_bundles.get(cache_key) if known_bundles else None
        if known is not None and known.status_key != _status_key(generation, status):
            known = None
        children = _known_children.get(cache_key) if known_bundles else None
        world = await gather(api, namespace, name, spec, known, children)
    missing = [f"{kind} {cname}" for (kind, cname), w in world.consumers.items() if w is None]
    problems = decide.spec_problems(spec, missing, namespace) + await _claimed_by_others(api, namespace, name, world)
    if problems:
        return await _refuse(api, body, "InvalidSpec", "; ".join(problems), now)

    containment = plan_containment(name, spec, incidents, upstream)
    plan = decide.plan_bundle(
        spec,
        world.stored,
        _highest_seen(status),
        current=_current_revision(status, world),
        containment=containment,
        identity=parsed.identity,
    )
    owner = names.owner_reference("AgentDeployment", name, meta["uid"])
    report = AgentReport(name, namespace, True, "", "", spec=spec)
    stored = list(world.stored)

    # 1. Pin spec.bundle as an immutable ConfigMap (pinning is not rolling out: a frozen agent pins too).
    if plan.create:
        stored.append(await _create_bundle(api, namespace, name, plan, owner))
        world.bundle_data = {**world.bundle_data, names.bundle_configmap(name, plan.spec_revision): plan.data}
        report.actions.append(f"Pinned bundle revision {plan.spec_revision}")
    # 2. Record before changing: a revision taken out by an incident is marked bad first.
    for revision in plan.mark_bad:
        stored = await _set_verdict(api, namespace, stored, revision, RevisionVerdict.BAD)
        report.actions.append(f"Marked bundle revision {revision} bad")
    # 2b. The redeploy gate: an unproven revision rolls out only once its evaluation Job passed (reconcilers.gate).
    gated = await gate_pass(
        api, body, spec, plan, stored, _current_revision(status, world), containment, now, report.actions
    )
    stored = gated.stored if gated.stored is not None else stored
    if gated.hold:
        plan.active_revision = _current_revision(status, world)
    # 3. The fast, non-destructive levers, shadow and revoke, at once.
    control, policy = await asyncio.gather(
        control_lever.apply_control(
            api, namespace, name, world.control, containment, owner, report.actions, remembered=world.remembered
        ),
        egress_lever.apply_policy(
            api, namespace, name, spec, world.policy, containment, owner, report.actions, remembered=world.remembered
        ),
    )
    _known_children[cache_key] = (control, policy)
    # 4. Roll consumers to the active revision.
    active = next((r for r in stored if r.revision == plan.active_revision), None)
    consumers: dict[tuple[str, str], dict[str, Any]] = {k: w for k, w in world.consumers.items() if w}
    if active is not None:
        previous = _current_revision(status, world)
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
                consumers[key] = await _wire(api, namespace, name, ref.kind.value, consumers[key], patch)
                report.actions.append(f"Wired {ref.kind.value} {ref.name} to bundle revision {active.revision}")
        if plan.reason == "RolledBack" and previous != active.revision:
            report.rollback = f"rolled back from revision {previous} to {active.revision}"
    if plan.reason == "RollbackRefused" and containment.rollbacks:
        report.rollback_refused = plan.message
    # 5. Drain last (it kills pods and their memory), or restore what a drain recorded.
    pods_left = await drain_lever.apply_drain(
        api, namespace, spec, consumers, containment, report.actions, report.drift
    )
    # 6. Promotion on evidence, then pruning beyond the history limit.
    stored = await _promote_and_prune(api, namespace, spec, status, stored, active, containment, now, report)

    report.levers = {
        Lever.SHADOW: control_lever.observe_shadow(control, containment),
        Lever.REVOKE_TOOLS: egress_lever.observe_revocation(spec, control, policy, containment),
        Lever.DRAIN: drain_lever.observe_drain(spec, containment, consumers, pods_left),
    }
    new_status = decide.agent_status(
        status,
        plan=plan,
        stored_after=stored,
        consumers=[
            {
                "kind": ref.kind.value,
                "name": ref.name,
                "revision": wiring.wired_revision(consumers[(ref.kind.value, ref.name)]),
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
    if not (status_later or defer_status):  # a full pass: the readiness checklist (an incident's pass keeps it)
        checklist = await readiness_pass(
            api,
            body,
            spec,
            control=control,
            consumers=consumers,
            active_revision=active.revision if active else None,
            owner=owner,
            now=now,
        )
        new_status = with_readiness(new_status, checklist)
    if not (defer_status and containment.drain_waiting and not containment.drained):
        if status_later:
            write_status_later(api, body, new_status)
        else:
            await write_status(api, body, new_status)
        _known_bundles[cache_key] = _KnownBundles(
            _status_key(generation, new_status), list(stored), dict(world.bundle_data)
        )
    report.body = {**body, "status": new_status}
    report.world = AgentWorld(
        stored=stored,
        consumers=dict(consumers),
        control=control,
        policy=policy,
        bundle_data=world.bundle_data,
    )
    for action in report.actions:
        log.info("%s (agent %s/%s)", action, namespace, name)
    ready = next(c for c in new_status["conditions"] if c["type"] == "Ready")
    report.ready, report.reason, report.message = ready["status"] == "True", ready["reason"], ready["message"]
    report.active_revision = active.revision if active else None
    return report


async def _claimed_by_others(api: KubeApi, namespace: str, name: str, world: AgentWorld) -> list[str]:
    """A consumer another agent wires (and still names) is that agent's: one per problem. Read only when a
    consumer's template names another agent."""
    problems = []
    for (kind, cname), workload in world.consumers.items():
        owner = wiring.wired_agent(workload) if workload else None
        if owner is None or owner == name:
            continue
        other = await api.get_or_none(AGENTDEPLOYMENTS, namespace, owner)
        if other is not None and wiring.names_consumer(other, kind, cname):
            problems.append(wiring.claim_problem(kind, cname, owner))
    return problems


async def _wire(
    api: KubeApi, namespace: str, name: str, kind: str, workload: dict[str, Any], patch: dict[str, Any]
) -> dict[str, Any]:
    """The wiring patch, guarded by the consumer's resourceVersion: two agents naming one consumer cannot both
    wire it. On a conflict the consumer is read again; wired by another agent meanwhile, the pass fails (409)
    and the next one refuses this agent."""
    cname = workload["metadata"]["name"]
    for attempt in range(1, 4):
        guarded = {**patch, "metadata": {"resourceVersion": workload["metadata"].get("resourceVersion")}}
        try:
            return await api.patch(WORKLOADS[kind], namespace, cname, guarded, patch_type="strategic")
        except ApiError as error:
            if not error.conflict or attempt == 3:
                raise
        workload = await api.get(WORKLOADS[kind], namespace, cname)
        owner = wiring.wired_agent(workload)
        if owner not in (None, name):
            raise ApiError(409, "Conflict", wiring.claim_problem(kind, cname, owner))
    raise AssertionError("unreachable")


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


async def _create_bundle(
    api: KubeApi, namespace: str, agent: str, plan: decide.BundlePlan, owner: dict[str, Any]
) -> bundles.StoredRevision:
    cm_name = names.bundle_configmap(agent, plan.spec_revision)
    labels = {
        **network.labels_for(agent, names.COMPONENT_BUNDLE),
        names.LABEL_REVISION: str(plan.spec_revision),
        names.LABEL_HASH: bundles.short_hash(plan.sha256),
    }
    body = names.owned(
        "v1",
        "ConfigMap",
        cm_name,
        namespace,
        owner,
        labels=labels,
        annotations={names.ANNOTATION_SHA256: plan.sha256},
        immutable=True,
        data=plan.data,
    )
    # Already there: a previous pass (or an operator that died mid-way) made it; used if it is ours.
    created, _ = await api.create_or_get(CONFIGMAPS, namespace, body)
    stored = bundles.stored_revision_from_configmap(created)
    if stored is None or stored.hash != plan.sha256:
        raise ApiError(409, "Conflict", f"ConfigMap {cm_name} exists with other content; will re-read and retry")
    return stored


async def _set_verdict(
    api: KubeApi, namespace: str, stored: list[bundles.StoredRevision], revision: int, verdict: RevisionVerdict
) -> list[bundles.StoredRevision]:
    target = next(r for r in stored if r.revision == revision)
    label = decide.verdict_label(verdict)
    await api.patch(CONFIGMAPS, namespace, target.name, {"metadata": {"labels": {names.LABEL_VERDICT: label}}})
    return [dataclasses.replace(r, verdict=verdict) if r is target else r for r in stored]


async def _promote_and_prune(
    api: KubeApi,
    namespace: str,
    spec: AgentDeploymentSpec,
    status: dict[str, Any],
    stored: list[bundles.StoredRevision],
    active: bundles.StoredRevision | None,
    containment: Containment,
    now: datetime,
    report: AgentReport,
) -> list[bundles.StoredRevision]:
    previous = status.get("bundle") or {}
    if active is not None:
        since = previous.get("activeSince") if previous.get("revision") == active.revision else None
        soak = spec.promotion.soak_seconds if spec.promotion else 3600
        if bundles.should_promote(active, since, now, soak, len(containment.incidents)):
            stored = await _set_verdict(api, namespace, stored, active.revision, RevisionVerdict.GOOD)
            report.actions.append(f"Marked bundle revision {active.revision} known good after {soak}s with no incident")
    good = bundles.last_known_good(stored)
    keep = ({active.revision} if active else set()) | ({good.revision} if good else set())
    for old in bundles.plan_prune(stored, spec.revision_history_limit, keep):
        await api.delete(CONFIGMAPS, namespace, old.name)
        stored = [r for r in stored if r is not old]
        report.actions.append(f"Pruned bundle revision {old.revision} (ConfigMap {old.name})")
    return stored


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


async def unwire_agent_deployment(api: KubeApi, body: dict[str, Any]) -> list[str]:
    """Remove the bundle and control mounts from every consumer (the agent is being deleted); a consumer
    another agent wires is that agent's and is left alone."""
    meta = body["metadata"]
    namespace = meta["namespace"]
    spec, _ = decide.parse_spec(body.get("spec"))
    actions = []
    for ref in spec.consumers if spec else []:
        workload = await api.get_or_none(WORKLOADS[ref.kind.value], namespace, ref.name)
        if workload is None or wiring.wired_agent(workload) not in (None, meta["name"]):
            continue
        patch = wiring.plan_unwiring_patch(workload)
        if patch is not None:
            await api.patch(WORKLOADS[ref.kind.value], namespace, ref.name, patch, patch_type="strategic")
            actions.append(f"Unwired {ref.kind.value} {ref.name} from agent {meta['name']}")
    for action in actions:
        log.info("%s", action)
    return actions


__all__ = ["AgentReport", "LeverObservation", "list_incidents", "reconcile_agent_deployment", "rfc3339"]
