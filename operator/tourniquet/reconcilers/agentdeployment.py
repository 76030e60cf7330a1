"""Reconcile one AgentDeployment: gather → decide → act → report.

Every event (create, update, resume, the resync timer, an incident, a CLI call) runs this same
function. Each action is "make X equal Y", so a pass over a converged agent issues no write. The
agent's containment is the union of its open incidents, recomputed on every pass.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tourniquet.adapters.kube import (
    AGENTDEPLOYMENTS,
    AGENTINCIDENTS,
    CONFIGMAPS,
    NETWORKPOLICIES,
    PODS,
    SCALEDOBJECTS,
    WORKLOADS,
    ApiError,
    KubeApi,
)
from tourniquet.domain import agent as decide
from tourniquet.domain import bundles, drain, names, network, wiring
from tourniquet.domain.conditions import rfc3339
from tourniquet.domain.containment import Containment, IncidentView, incident_view, plan_containment
from tourniquet.models import AgentDeploymentSpec, Lever, RevisionVerdict

log = logging.getLogger(__name__)


@dataclass
class LeverObservation:
    """A lever's state on one agent, as observed after acting."""

    lever: Lever
    applied: bool
    detail: str
    holders: list[str]
    pending: bool = False  # held, but waiting (drain waits for evidence capture)


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


@dataclass
class AgentWorld:
    """Everything observed about one agent before deciding."""

    stored: list[bundles.StoredRevision]
    consumers: dict[tuple[str, str], dict[str, Any] | None]
    control: dict[str, Any] | None
    policy: dict[str, Any] | None


def _now() -> datetime:
    return datetime.now(UTC)


async def gather(api: KubeApi, namespace: str, name: str, spec: AgentDeploymentSpec) -> AgentWorld:
    stored_cms, control, policy, *workloads = await asyncio.gather(
        api.list(CONFIGMAPS, namespace, label_selector=names.bundle_selector(name)),
        api.get_or_none(CONFIGMAPS, namespace, names.control_configmap(name)),
        api.get_or_none(NETWORKPOLICIES, namespace, names.network_policy(name)),
        *(api.get_or_none(WORKLOADS[ref.kind.value], namespace, ref.name) for ref in spec.consumers),
    )
    stored = [s for s in (bundles.stored_revision_from_configmap(cm) for cm in stored_cms) if s is not None]
    return AgentWorld(
        stored=stored,
        consumers={(ref.kind.value, ref.name): w for ref, w in zip(spec.consumers, workloads, strict=True)},
        control=control,
        policy=policy,
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


async def write_status(api: KubeApi, body: dict[str, Any], new_status: dict[str, Any]) -> bool:
    """Patch /status only when it changed."""
    if new_status == (body.get("status") or {}):
        return False
    meta = body["metadata"]
    await api.patch(AGENTDEPLOYMENTS, meta["namespace"], meta["name"], {"status": new_status}, subresource="status")
    return True


async def reconcile_agent_deployment(
    api: KubeApi,
    body: dict[str, Any],
    *,
    incidents: list[IncidentView] | None = None,
    upstream: dict[str, AgentDeploymentSpec] | None = None,
    now: datetime | None = None,
) -> AgentReport:
    """Make the agent's children match its spec and its open incidents; report what is observed."""
    now = now or _now()
    meta = body["metadata"]
    name, namespace, generation = meta["name"], meta["namespace"], meta.get("generation")
    status = body.get("status") or {}

    spec, invalid = decide.parse_spec(body.get("spec"))
    if spec is None:
        return await _refuse(api, body, "InvalidSpec", invalid or "invalid spec", now)
    if incidents is None:
        incidents = await list_incidents(api, namespace)
    if upstream is None:
        upstream = await _upstream(api, namespace, spec, incidents)

    world = await gather(api, namespace, name, spec)
    missing = [f"{kind} {cname}" for (kind, cname), w in world.consumers.items() if w is None]
    problems = decide.spec_problems(spec, missing, namespace)
    if problems:
        return await _refuse(api, body, "InvalidSpec", "; ".join(problems), now)

    containment = plan_containment(name, spec, incidents, upstream)
    plan = decide.plan_bundle(
        spec, world.stored, _highest_seen(status), current=_current_revision(status, world), containment=containment
    )
    owner = names.owner_reference("AgentDeployment", name, meta["uid"])
    report = AgentReport(name, namespace, True, "", "", spec=spec)
    stored = list(world.stored)

    # 1. Pin spec.bundle as an immutable ConfigMap (pinning is not rolling out: a frozen agent pins too).
    if plan.create:
        stored.append(await _create_bundle(api, namespace, name, plan, owner))
        report.actions.append(f"Pinned bundle revision {plan.spec_revision}")
    # 2. Record before changing: a revision taken out by an incident is marked bad first.
    for revision in plan.mark_bad:
        stored = await _set_verdict(api, namespace, stored, revision, RevisionVerdict.BAD)
        report.actions.append(f"Marked bundle revision {revision} bad")
    # 3. The fast, non-destructive levers: shadow and revoke.
    control = await _apply_control(api, namespace, name, world.control, containment, owner, report)
    policy = await _apply_policy(api, namespace, name, spec, world.policy, containment, owner, report)
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
                consumers[key] = await api.patch(
                    WORKLOADS[ref.kind.value], namespace, ref.name, patch, patch_type="strategic"
                )
                report.actions.append(f"Wired {ref.kind.value} {ref.name} to bundle revision {active.revision}")
        if plan.reason == "RolledBack" and previous != active.revision:
            report.rollback = f"rolled back from revision {previous} to {active.revision}"
    if plan.reason == "RollbackRefused" and containment.rollbacks:
        report.rollback_refused = plan.message
    # 5. Drain last (it kills pods and their memory), or restore what a drain recorded.
    pods_left = await _apply_drain(api, namespace, spec, consumers, containment, report)
    # 6. Promotion on evidence, then pruning beyond the history limit.
    stored = await _promote_and_prune(api, namespace, spec, status, stored, active, containment, now, report)

    report.levers = _observe_levers(spec, containment, control, policy, consumers, pods_left)
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
        now=now,
        generation=generation,
    )
    await write_status(api, body, new_status)
    for action in report.actions:
        log.info("%s (agent %s/%s)", action, namespace, name)
    ready = next(c for c in new_status["conditions"] if c["type"] == "Ready")
    report.ready, report.reason, report.message = ready["status"] == "True", ready["reason"], ready["message"]
    report.active_revision = active.revision if active else None
    return report


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
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": cm_name,
            "namespace": namespace,
            "labels": {
                **network.labels_for(agent, names.COMPONENT_BUNDLE),
                names.LABEL_REVISION: str(plan.spec_revision),
                names.LABEL_HASH: bundles.short_hash(plan.sha256),
            },
            "annotations": {names.ANNOTATION_SHA256: plan.sha256},
            "ownerReferences": [owner],
        },
        "immutable": True,
        "data": plan.data,
    }
    try:
        created = await api.create(CONFIGMAPS, namespace, body)
    except ApiError as error:
        if not error.already_exists:
            raise
        # A previous pass (or an operator that died mid-way) created it: use it if it is ours.
        created = await api.get(CONFIGMAPS, namespace, cm_name)
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
    return [
        bundles.StoredRevision(r.revision, r.hash, r.name, r.created_at, verdict) if r is target else r for r in stored
    ]


async def _apply_control(
    api: KubeApi,
    namespace: str,
    agent: str,
    observed: dict[str, Any] | None,
    containment: Containment,
    owner: dict[str, Any],
    report: AgentReport,
) -> dict[str, Any]:
    data = network.desired_control_data(containment.mode, containment.revoked_tools)
    cm_name = names.control_configmap(agent)
    if observed is None:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": cm_name,
                "namespace": namespace,
                "labels": network.labels_for(agent, names.COMPONENT_CONTROL),
                "ownerReferences": [owner],
            },
            "data": data,
        }
        try:
            result = await api.create(CONFIGMAPS, namespace, body)
        except ApiError as error:
            if not error.already_exists:
                raise
            result = await api.patch(CONFIGMAPS, namespace, cm_name, {"data": data})
        report.actions.append(f"Created control ConfigMap {cm_name} (mode {containment.mode})")
        return result
    if {k: (observed.get("data") or {}).get(k) for k in data} != data:
        result = await api.patch(CONFIGMAPS, namespace, cm_name, {"data": data})
        report.actions.append(f"Set control ConfigMap {cm_name}: mode {data['mode']}, revoked {data['revokedTools']}")
        return result
    return observed


async def _apply_policy(
    api: KubeApi,
    namespace: str,
    agent: str,
    spec: AgentDeploymentSpec,
    observed: dict[str, Any] | None,
    containment: Containment,
    owner: dict[str, Any],
    report: AgentReport,
) -> dict[str, Any]:
    desired = network.desired_network_policy_spec(spec, containment.revoked_tools)
    np_name = names.network_policy(agent)
    if observed is None:
        body = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": np_name,
                "namespace": namespace,
                "labels": network.labels_for(agent, "egress"),
                "ownerReferences": [owner],
            },
            "spec": desired,
        }
        try:
            result = await api.create(NETWORKPOLICIES, namespace, body)
        except ApiError as error:
            if not error.already_exists:
                raise
            result = await _replace_policy_spec(api, namespace, np_name, desired)
        report.actions.append(f"Created NetworkPolicy {np_name} with {len(desired['egress'])} egress rule(s)")
        return result
    if observed.get("spec") != desired:
        result = await _replace_policy_spec(api, namespace, np_name, desired)
        report.actions.append(f"Set NetworkPolicy {np_name} to {len(desired['egress'])} egress rule(s)")
        return result
    return observed


async def _replace_policy_spec(api: KubeApi, namespace: str, name: str, desired: dict[str, Any]) -> dict[str, Any]:
    """Replace the spec whole: the policy becomes exactly the desired one, nothing merged in."""
    return await api.patch(
        NETWORKPOLICIES, namespace, name, [{"op": "replace", "path": "/spec", "value": desired}], patch_type="json"
    )


async def _scaled_objects(api: KubeApi, namespace: str) -> list[dict[str, Any]]:
    """KEDA ScaledObjects in the namespace; none when KEDA is not installed."""
    try:
        return await api.list(SCALEDOBJECTS, namespace)
    except ApiError as error:
        if error.not_found:
            return []
        raise


async def _apply_drain(
    api: KubeApi,
    namespace: str,
    spec: AgentDeploymentSpec,
    consumers: dict[tuple[str, str], dict[str, Any]],
    containment: Containment,
    report: AgentReport,
) -> dict[tuple[str, str], int]:
    """Drain (or restore) each consumer; returns how many pods each still has while drained."""
    if containment.drain_waiting and not containment.drain:
        return {}  # a drain is coming once evidence is captured: neither drain nor restore now
    recorded = [w for w in consumers.values() if drain.recorded_replicas(w) is not None]
    if not containment.drained and not recorded:
        return {}
    scaled_objects = await _scaled_objects(api, namespace)
    pods_left: dict[tuple[str, str], int] = {}
    for ref in spec.consumers:
        key = (ref.kind.value, ref.name)
        workload = consumers[key]
        resource = WORKLOADS[ref.kind.value]
        if containment.drained:
            patch = drain.plan_drain_patch(workload)
            if patch is not None:
                before = drain.replicas(workload)
                if drain.recorded_replicas(workload) is not None:
                    report.drift.append(
                        f"{ref.kind.value} {ref.name} was scaled to {before} by {drain.scaled_up_by(workload)} "
                        "during the incident; returned it to 0"
                    )
                consumers[key] = await _patch_workload(
                    api, resource, namespace, ref.name, patch, drain.plan_drain_patch
                )
                report.actions.append(f"Scaled {ref.kind.value} {ref.name} from {before} to 0 replicas")
            for scaled in scaled_objects:
                if drain.targets(scaled, ref.kind.value, ref.name):
                    keda = drain.plan_keda_pause(scaled)
                    if keda is not None:
                        await api.patch(SCALEDOBJECTS, namespace, scaled["metadata"]["name"], keda)
                        report.actions.append(f"Paused KEDA ScaledObject {scaled['metadata']['name']} at 0 replicas")
            pods_left[key] = await _count_pods(api, namespace, consumers[key])
        else:
            patch = drain.plan_restore_patch(workload)
            if patch is not None:
                consumers[key] = await _patch_workload(
                    api, resource, namespace, ref.name, patch, drain.plan_restore_patch
                )
                report.actions.append(
                    f"Restored {ref.kind.value} {ref.name} to {drain.replicas(consumers[key])} replicas"
                )
            for scaled in scaled_objects:
                if drain.targets(scaled, ref.kind.value, ref.name):
                    keda = drain.plan_keda_restore(scaled)
                    if keda is not None:
                        await api.patch(SCALEDOBJECTS, namespace, scaled["metadata"]["name"], keda)
                        report.actions.append(f"Resumed KEDA ScaledObject {scaled['metadata']['name']}")
    return pods_left


async def _patch_workload(
    api: KubeApi, resource: Any, namespace: str, name: str, patch: dict[str, Any], replan: Any
) -> dict[str, Any]:
    """A drain/restore patch guarded by resourceVersion; on a conflict, re-read and re-plan once."""
    for _ in range(3):
        try:
            return await api.patch(resource, namespace, name, patch)
        except ApiError as error:
            if not error.conflict:
                raise
            fresh = await api.get(resource, namespace, name)
            patch = replan(fresh)
            if patch is None:
                return fresh
    return await api.patch(resource, namespace, name, patch)


async def _count_pods(api: KubeApi, namespace: str, workload: dict[str, Any]) -> int:
    selector = ((workload.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    if not selector:
        return 0
    pods = await api.list(PODS, namespace, label_selector=",".join(f"{k}={v}" for k, v in sorted(selector.items())))
    return sum(1 for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))


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


def _observe_levers(
    spec: AgentDeploymentSpec,
    containment: Containment,
    control: dict[str, Any],
    policy: dict[str, Any],
    consumers: dict[tuple[str, str], dict[str, Any]],
    pods_left: dict[tuple[str, str], int],
) -> dict[Lever, LeverObservation]:
    """Observed state of every lever, from the objects as the API server returned them."""
    data = control.get("data") or {}
    observed: dict[Lever, LeverObservation] = {}
    shadow_on = data.get("mode") == "shadow"
    observed[Lever.SHADOW] = LeverObservation(
        Lever.SHADOW,
        shadow_on,
        "mode: shadow set in the control ConfigMap; the agent runtime follows it within seconds"
        if shadow_on
        else "mode: active",
        containment.holders(Lever.SHADOW),
    )
    listed = network.revoked_tools_listed(data)
    revoked = containment.revoked_tools
    desired_egress = network.desired_egress(spec, revoked)
    enforced = bool(revoked) and revoked <= listed and (policy.get("spec") or {}).get("egress") == desired_egress
    observed[Lever.REVOKE_TOOLS] = LeverObservation(
        Lever.REVOKE_TOOLS,
        enforced,
        network.describe_revocation(spec, revoked) if enforced else "no tool revoked" if not revoked else
        f"not yet enforced: revokedTools lists {sorted(listed)}, the NetworkPolicy does not match",
        containment.holders(Lever.REVOKE_TOOLS),
    )
    parts, drained = [], True
    for ref in spec.consumers:
        key = (ref.kind.value, ref.name)
        workload = consumers.get(key) or {}
        now_replicas = drain.replicas(workload)
        before = drain.recorded_replicas(workload)
        drained = drained and now_replicas == 0
        text = f"{ref.name} {before if before is not None else now_replicas} → {now_replicas} replicas"
        if key in pods_left:
            text += f", {pods_left[key]} pod(s) still terminating" if pods_left[key] else ", no pod left"
        parts.append(text)
    observed[Lever.DRAIN] = LeverObservation(
        Lever.DRAIN,
        bool(spec.consumers) and drained and containment.drained,
        "; ".join(parts)
        if containment.drained
        else ("waiting for evidence capture before draining" if containment.drain_waiting else "; ".join(parts)),
        containment.holders(Lever.DRAIN) or sorted(containment.drain_waiting),
        pending=bool(containment.drain_waiting) and not containment.drained,
    )
    return observed


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
    """Remove the bundle and control mounts from every consumer (the agent is being deleted)."""
    meta = body["metadata"]
    namespace = meta["namespace"]
    spec, _ = decide.parse_spec(body.get("spec"))
    actions = []
    for ref in spec.consumers if spec else []:
        workload = await api.get_or_none(WORKLOADS[ref.kind.value], namespace, ref.name)
        patch = wiring.plan_unwiring_patch(workload) if workload else None
        if patch is not None:
            await api.patch(WORKLOADS[ref.kind.value], namespace, ref.name, patch, patch_type="strategic")
            actions.append(f"Unwired {ref.kind.value} {ref.name} from agent {meta['name']}")
    for action in actions:
        log.info("%s", action)
    return actions


__all__ = ["AgentReport", "LeverObservation", "list_incidents", "reconcile_agent_deployment", "rfc3339"]
