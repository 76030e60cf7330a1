"""An agent's stored bundle revisions: pinning one, recording a verdict, promotion and pruning."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from tourniquet.adapters.kube import CONFIGMAPS, ApiError, KubeApi
from tourniquet.domain import agent as decide
from tourniquet.domain import bundles, names, network
from tourniquet.domain.containment import Containment
from tourniquet.models import AgentDeploymentSpec, RevisionVerdict


async def create_bundle(
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


async def set_verdict(
    api: KubeApi, namespace: str, stored: list[bundles.StoredRevision], revision: int, verdict: RevisionVerdict
) -> list[bundles.StoredRevision]:
    target = next(r for r in stored if r.revision == revision)
    label = decide.verdict_label(verdict)
    await api.patch(CONFIGMAPS, namespace, target.name, {"metadata": {"labels": {names.LABEL_VERDICT: label}}})
    return [dataclasses.replace(r, verdict=verdict) if r is target else r for r in stored]


async def promote_and_prune(
    api: KubeApi,
    namespace: str,
    spec: AgentDeploymentSpec,
    status: dict[str, Any],
    stored: list[bundles.StoredRevision],
    active: bundles.StoredRevision | None,
    containment: Containment,
    now: datetime,
    actions: list[str],
) -> list[bundles.StoredRevision]:
    previous = status.get("bundle") or {}
    if active is not None:
        since = previous.get("activeSince") if previous.get("revision") == active.revision else None
        soak = spec.promotion.soak_seconds if spec.promotion else 3600
        if bundles.should_promote(active, since, now, soak, len(containment.incidents)):
            stored = await set_verdict(api, namespace, stored, active.revision, RevisionVerdict.GOOD)
            actions.append(f"Marked bundle revision {active.revision} known good after {soak}s with no incident")
    good = bundles.last_known_good(stored)
    keep = ({active.revision} if active else set()) | ({good.revision} if good else set())
    for old in bundles.plan_prune(stored, spec.revision_history_limit, keep):
        await api.delete(CONFIGMAPS, namespace, old.name)
        stored = [r for r in stored if r is not old]
        actions.append(f"Pruned bundle revision {old.revision} (ConfigMap {old.name})")
    return stored
