"""The readiness checklist's I/O, run in the agent's full passes (not an incident's): the runtime's
acknowledgements and the drills' records are read, the acknowledgement ConfigMap is kept, the metrics are set.
The decisions are in :mod:`tourniquet.domain.readiness`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from tourniquet import review_metrics
from tourniquet.adapters.kube import CONFIGMAPS, KubeApi
from tourniquet.domain import names, network, readiness
from tourniquet.models import AgentDeploymentSpec
from tourniquet.reconcilers.drill import drill_records

COMPONENT_ACK = "control-ack"


async def acknowledgements(
    api: KubeApi, namespace: str, agent: str, owner: dict[str, Any], now: datetime
) -> list[readiness.Ack]:
    """What the agent's pods report they apply; the ConfigMap they report into is made here when missing, and
    entries of pods long gone are removed."""
    name = readiness.ack_configmap(agent)
    cm = await api.get_or_none(CONFIGMAPS, namespace, name)
    if cm is None:
        body = names.owned(
            "v1", "ConfigMap", name, namespace, owner, labels=network.labels_for(agent, COMPONENT_ACK), data={}
        )
        cm, _ = await api.create_or_get(CONFIGMAPS, namespace, body)
    acks = readiness.parse_acks(cm.get("data"))
    gone = readiness.stale_acks(acks, now)
    if gone:
        await api.patch(CONFIGMAPS, namespace, name, {"data": dict.fromkeys(gone)})
        acks = [a for a in acks if a.pod not in gone]
    return acks


async def readiness_pass(
    api: KubeApi,
    body: dict[str, Any],
    spec: AgentDeploymentSpec,
    *,
    control: Mapping[str, Any] | None,
    consumers: Mapping[tuple[str, str], Mapping[str, Any] | None],
    active_revision: int | None,
    owner: dict[str, Any],
    now: datetime,
) -> dict[str, Any]:
    """status.readiness for this agent now, with its metrics set."""
    meta = body["metadata"]
    namespace, agent = meta["namespace"], meta["name"]
    inputs = readiness.ReadinessInputs(
        agent=agent,
        spec=spec,
        raw_spec=body.get("spec") or {},
        control=control,
        acks=await acknowledgements(api, namespace, agent, owner, now),
        drills=await drill_records(api, namespace, agent),
        consumers=consumers,
        active_revision=active_revision,
        now=now,
    )
    result = readiness.compute_readiness(inputs)
    review_metrics.observe_readiness(namespace, agent, result)
    return result
