"""Drain: scale every consumer to zero (recording what to restore), pause KEDA; or restore.

Drain goes last: it kills the pods and their in-memory state. "replicas 0" and "no pod left" are
observed separately (pods live through their termination grace period). An HPA does not scale a
workload whose replicas are 0, so only KEDA, which would, needs pausing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tourniquet.adapters.kube import PODS, SCALEDOBJECTS, WORKLOADS, ApiError, KubeApi
from tourniquet.domain import drain
from tourniquet.levers.common import LeverContext, LeverObservation
from tourniquet.models import Lever


async def _scaled_objects(api: KubeApi, namespace: str) -> list[dict[str, Any]]:
    """KEDA ScaledObjects in the namespace; none when KEDA is not installed."""
    return await api.list_if_served(SCALEDOBJECTS, namespace)


async def apply_drain(ctx: LeverContext) -> None:
    """Drain (or restore) each consumer; ctx.pods_left: how many pods each still has while drained. A consumer
    scaled down by this very pass is not counted: every pod it had is only starting to stop (the next
    pass counts them)."""
    api, namespace, spec, consumers, containment = ctx.api, ctx.namespace, ctx.spec, ctx.consumers, ctx.containment
    actions, pods_left = ctx.actions, ctx.pods_left
    if containment.drain_waiting and not containment.drained:
        return  # a drain is coming once evidence is captured: neither drain nor restore now
    recorded = [w for w in consumers.values() if drain.recorded_replicas(w) is not None]
    if not containment.drained and not recorded:
        return
    scaled_objects = await _scaled_objects(api, namespace)
    for ref in spec.consumers:
        key = (ref.kind.value, ref.name)
        workload = consumers[key]
        resource = WORKLOADS[ref.kind.value]
        if containment.drained:
            patch = drain.plan_drain_patch(workload)
            if patch is not None:
                before = drain.replicas(workload)
                if drain.recorded_replicas(workload) is not None:
                    ctx.drift.setdefault(Lever.DRAIN, []).append(
                        f"{ref.kind.value} {ref.name} was scaled to {before} by {drain.scaled_up_by(workload)} "
                        "during the incident; returned it to 0"
                    )
                consumers[key] = await _patch_workload(
                    api, resource, namespace, ref.name, patch, drain.plan_drain_patch
                )
                actions.append(f"Scaled {ref.kind.value} {ref.name} from {before} to 0 replicas")
            await _apply_keda(
                api,
                namespace,
                scaled_objects,
                ref.kind.value,
                ref.name,
                drain.plan_keda_pause,
                "Paused KEDA ScaledObject {} at 0 replicas",
                actions,
            )
            if patch is None:
                pods_left[key] = await _count_pods(api, namespace, consumers[key])
        else:
            patch = drain.plan_restore_patch(workload)
            if patch is not None:
                consumers[key] = await _patch_workload(
                    api, resource, namespace, ref.name, patch, drain.plan_restore_patch
                )
                actions.append(f"Restored {ref.kind.value} {ref.name} to {drain.replicas(consumers[key])} replicas")
            await _apply_keda(
                api,
                namespace,
                scaled_objects,
                ref.kind.value,
                ref.name,
                drain.plan_keda_restore,
                "Resumed KEDA ScaledObject {}",
                actions,
            )


async def _apply_keda(
    api: KubeApi,
    namespace: str,
    scaled_objects: list[dict[str, Any]],
    kind: str,
    name: str,
    plan: Callable[[dict[str, Any]], dict[str, Any] | None],
    done: str,
    actions: list[str],
) -> None:
    """Pause or resume the KEDA ScaledObjects that drive one consumer."""
    for scaled in scaled_objects:
        if drain.targets(scaled, kind, name):
            patch = plan(scaled)
            if patch is not None:
                await api.patch(SCALEDOBJECTS, namespace, scaled["metadata"]["name"], patch)
                actions.append(done.format(scaled["metadata"]["name"]))


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


def observe_drain(ctx: LeverContext) -> LeverObservation:
    spec, containment, consumers, pods_left = ctx.spec, ctx.containment, ctx.consumers, ctx.pods_left
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
        elif containment.drained and now_replicas == 0:
            text += ", scaled down just now"
        parts.append(text)
    waiting = bool(containment.drain_waiting) and not containment.drained
    detail = "; ".join(parts) if containment.drained or not waiting else "waiting for evidence capture before draining"
    return LeverObservation(
        Lever.DRAIN,
        bool(spec.consumers) and drained and containment.drained,
        detail,
        containment.claimants(Lever.DRAIN),  # a drain already in force is a newcomer's too
        pending=waiting,
    )
