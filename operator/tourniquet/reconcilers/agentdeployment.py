"""Reconcile one AgentDeployment: gather → decide → act → report.

Every event (create, update, resume, the resync timer, a CLI call) runs this same function. Each
action is "make X equal Y", so a pass over a converged agent issues no write at all.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tourniquet.adapters.kube import (
    AGENTDEPLOYMENTS,
    CONFIGMAPS,
    NETWORKPOLICIES,
    WORKLOADS,
    ApiError,
    KubeApi,
)
from tourniquet.domain import agent as decide
from tourniquet.domain import bundles, names, network, wiring
from tourniquet.models import AgentDeploymentSpec, ConsumerRef, RevisionVerdict

log = logging.getLogger(__name__)


@dataclass
class Containment:
    """What open incidents ask of this agent's control ConfigMap and NetworkPolicy."""

    mode: str = "active"
    revoked_tools: set[str] = field(default_factory=set)


@dataclass
class AgentWorld:
    """Everything observed about one agent before deciding."""

    stored: list[bundles.StoredRevision]
    consumers: dict[tuple[str, str], dict[str, Any] | None]
    control: dict[str, Any] | None
    policy: dict[str, Any] | None


@dataclass
class Outcome:
    ready: bool
    reason: str
    message: str
    active_revision: int | None = None
    actions: list[str] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC)


async def gather(api: KubeApi, namespace: str, name: str, spec: AgentDeploymentSpec) -> AgentWorld:
    async def consumer(ref: ConsumerRef) -> dict[str, Any] | None:
        return await api.get_or_none(WORKLOADS[ref.kind.value], namespace, ref.name)

    stored_cms, control, policy, *workloads = await asyncio.gather(
        api.list(CONFIGMAPS, namespace, label_selector=names.bundle_selector(name)),
        api.get_or_none(CONFIGMAPS, namespace, names.control_configmap(name)),
        api.get_or_none(NETWORKPOLICIES, namespace, names.network_policy(name)),
        *(consumer(ref) for ref in spec.consumers),
    )
    stored = [s for s in (bundles.stored_revision_from_configmap(cm) for cm in stored_cms) if s is not None]
    return AgentWorld(
        stored=stored,
        consumers={(ref.kind.value, ref.name): w for ref, w in zip(spec.consumers, workloads, strict=True)},
        control=control,
        policy=policy,
    )


def _highest_seen(status: dict[str, Any]) -> int:
    bundle = status.get("bundle") or {}
    seen = [r.get("revision", 0) for r in bundle.get("history") or []]
    return max([0, bundle.get("revision") or 0, bundle.get("specRevision") or 0, *seen])


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
    containment: Containment | None = None,
    open_incidents: int = 0,
    now: datetime | None = None,
) -> Outcome:
    now = now or _now()
    meta = body["metadata"]
    name, namespace, generation = meta["name"], meta["namespace"], meta.get("generation")
    status = body.get("status") or {}
    containment = containment or Containment()

    spec, invalid = decide.parse_spec(body.get("spec"))
    if spec is None:
        return await _refuse(api, body, "InvalidSpec", invalid or "invalid spec", now)

    world = await gather(api, namespace, name, spec)
    missing = [f"{kind} {cname}" for (kind, cname), w in world.consumers.items() if w is None]
    problems = decide.spec_problems(spec, missing, namespace)
    if problems:
        return await _refuse(api, body, "InvalidSpec", "; ".join(problems), now)
    try:
        plan = decide.plan_bundle(spec, world.stored, _highest_seen(status))
    except decide.BundleRefused as refused:
        return await _refuse(api, body, refused.reason, refused.message, now)

    owner = names.owner_reference("AgentDeployment", name, meta["uid"])
    actions: list[str] = []
    stored = list(world.stored)

    # 1. Pin: the spec's revision as an immutable ConfigMap.
    if plan.create:
        created = await _create_bundle(api, namespace, name, plan, owner)
        stored.append(created)
        actions.append(f"Pinned bundle revision {plan.spec_revision} as ConfigMap {created.name}")
    active = next(r for r in stored if r.revision == plan.active_revision)

    # 2. Control ConfigMap and egress NetworkPolicy.
    actions += await _apply_control(api, namespace, name, world.control, containment, owner)
    actions += await _apply_policy(api, namespace, name, spec, world.policy, containment, owner)

    # 3. Wire the active revision into each consumer's pod template.
    consumers_status = []
    for ref in spec.consumers:
        workload = world.consumers[(ref.kind.value, ref.name)]
        assert workload is not None
        patch = wiring.plan_wiring_patch(
            workload,
            agent=name,
            revision=active.revision,
            bundle_cm=active.name,
            control_cm=names.control_configmap(name),
        )
        if patch is not None:
            await api.patch(WORKLOADS[ref.kind.value], namespace, ref.name, patch, patch_type="strategic")
            actions.append(f"Wired {ref.kind.value} {ref.name} to bundle revision {active.revision}")
        consumers_status.append({"kind": ref.kind.value, "name": ref.name, "revision": active.revision})

    # 4. Promotion on evidence, then pruning beyond the history limit.
    soak = (spec.promotion.soak_seconds if spec.promotion else 3600)
    active_since = (status.get("bundle") or {}).get("activeSince") if (status.get("bundle") or {}).get(
        "revision"
    ) == active.revision else None
    if bundles.should_promote(active, active_since, now, soak, open_incidents):
        await api.patch(CONFIGMAPS, namespace, active.name, {"metadata": {"labels": {names.LABEL_VERDICT: "good"}}})
        stored = [
            bundles.StoredRevision(r.revision, r.hash, r.name, r.created_at, RevisionVerdict.GOOD)
            if r.revision == active.revision
            else r
            for r in stored
        ]
        actions.append(f"Marked bundle revision {active.revision} known good after {soak}s with no incident")
    good = bundles.last_known_good(stored)
    keep = {active.revision} | ({good.revision} if good else set())
    for old in bundles.plan_prune(stored, spec.revision_history_limit, keep):
        await api.delete(CONFIGMAPS, namespace, old.name)
        stored.remove(old)
        actions.append(f"Pruned bundle revision {old.revision} (ConfigMap {old.name})")

    # 5. Report.
    new_status = decide.agent_status(
        status,
        plan=plan,
        stored_after=stored,
        consumers=consumers_status,
        extra_conditions=[],
        now=now,
        generation=generation,
    )
    await write_status(api, body, new_status)
    for action in actions:
        log.info("%s (agent %s/%s)", action, namespace, name)
    ready = next(c for c in new_status["conditions"] if c["type"] == "Ready")
    return Outcome(True, ready["reason"], ready["message"], active.revision, actions)


async def _refuse(api: KubeApi, body: dict[str, Any], reason: str, message: str, now: datetime) -> Outcome:
    """Touch nothing but the status, which says what is wrong."""
    meta = body["metadata"]
    new_status = decide.invalid_status(body.get("status") or {}, reason, message, now=now, generation=meta.get("generation"))
    if await write_status(api, body, new_status):
        log.warning("Refused AgentDeployment %s/%s: %s", meta["namespace"], meta["name"], message)
    return Outcome(False, reason, message)


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


async def _apply_control(
    api: KubeApi,
    namespace: str,
    agent: str,
    observed: dict[str, Any] | None,
    containment: Containment,
    owner: dict[str, Any],
) -> list[str]:
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
            await api.create(CONFIGMAPS, namespace, body)
        except ApiError as error:
            if not error.already_exists:
                raise
            await api.patch(CONFIGMAPS, namespace, cm_name, {"data": data})
        return [f"Created control ConfigMap {cm_name} (mode {containment.mode})"]
    if (observed.get("data") or {}) != data:
        await api.patch(CONFIGMAPS, namespace, cm_name, {"data": data})
        return [f"Set control ConfigMap {cm_name} to mode {containment.mode}, revoked {data['revokedTools']}"]
    return []


async def _apply_policy(
    api: KubeApi,
    namespace: str,
    agent: str,
    spec: AgentDeploymentSpec,
    observed: dict[str, Any] | None,
    containment: Containment,
    owner: dict[str, Any],
) -> list[str]:
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
            await api.create(NETWORKPOLICIES, namespace, body)
        except ApiError as error:
            if not error.already_exists:
                raise
            await api.patch(NETWORKPOLICIES, namespace, np_name, {"spec": desired})
        return [f"Created NetworkPolicy {np_name} allowing {len(desired['egress'])} egress rule(s)"]
    if observed.get("spec") != desired:
        # Replace the spec whole: the policy becomes exactly the desired one, nothing merged in.
        replace = [{"op": "replace", "path": "/spec", "value": desired}]
        await api.patch(NETWORKPOLICIES, namespace, np_name, replace, patch_type="json")
        return [f"Set NetworkPolicy {np_name} to {len(desired['egress'])} egress rule(s)"]
    return []


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
