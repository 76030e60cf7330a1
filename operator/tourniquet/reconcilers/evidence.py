"""Capture an incident's evidence into an immutable ConfigMap, once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tourniquet.adapters.kube import CONFIGMAPS, EVENTS, PODS, ApiError, KubeApi
from tourniquet.domain import names
from tourniquet.domain.evidence import EvidenceParts, build_evidence, evidence_configmap, evidence_status
from tourniquet.reconcilers.agentdeployment import AgentReport

MAX_PODS_WITH_LOGS = 10


def _selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


async def _gather_agent(api: KubeApi, namespace: str, report: AgentReport, parts: EvidenceParts) -> None:
    """What the agent pass just observed, plus its pods, their logs and the recent events."""
    body, spec = report.body or {}, report.spec
    assert spec is not None
    name = report.agent
    parts.agent[name] = {"spec": body.get("spec"), "status": body.get("status")}
    active = ((body.get("status") or {}).get("bundle") or {}).get("configMap")
    for (kind, consumer), workload in sorted(report.consumers.items()):
        if workload is not None:
            parts.consumers.append(
                {"kind": kind, "name": consumer, "spec": workload.get("spec"), "status": workload.get("status")}
            )
    labels = spec.pod_selector.match_labels or {}
    pods = await api.list(PODS, namespace, label_selector=_selector(labels)) if labels else []
    parts.pods += pods

    async def logs(pod: dict[str, Any]) -> None:
        pod_name = pod["metadata"]["name"]
        try:
            parts.logs[pod_name] = await api.request_text(
                PODS.path(namespace, pod_name, "log"), {"tailLines": 200, "allContainers": "true"}
            )
        except ApiError as error:
            parts.errors.append(f"logs of pod {pod_name}: {error}")

    async def events(involved: str) -> None:
        try:
            parts.events += await api.list(EVENTS, namespace, field_selector=f"involvedObject.name={involved}")
        except ApiError as error:
            parts.errors.append(f"events of {involved}: {error}")

    async def bundle(cm_name: str) -> None:
        """The running revision's bundle: as the pass read it, else read now."""
        data = report.bundle_data.get(cm_name)
        if data is None:
            try:
                data = ((await api.get_or_none(CONFIGMAPS, namespace, cm_name)) or {}).get("data") or {}
            except ApiError as error:
                parts.errors.append(f"bundle ConfigMap {cm_name}: {error}")
                return
        parts.bundle[name] = data.get("bundle.json", "")

    involved = [name, *(c for _, c in report.consumers), *(p["metadata"]["name"] for p in pods[:MAX_PODS_WITH_LOGS])]
    await asyncio.gather(
        *([bundle(active)] if active else []),
        *(logs(p) for p in pods[:MAX_PODS_WITH_LOGS]),
        *(events(i) for i in involved),
    )


async def capture_evidence(
    api: KubeApi,
    incident: dict[str, Any],
    agents: dict[str, AgentReport],
    *,
    captured_at: str,
) -> dict[str, Any]:
    """Create `<incident>-evidence` (or find the one a previous pass made); returns status.evidence."""
    meta = incident["metadata"]
    namespace, cm_name = meta["namespace"], names.evidence_configmap(meta["name"])
    if (incident.get("status") or {}).get("evidence"):
        existing = await api.get_or_none(CONFIGMAPS, namespace, cm_name)
        if existing is not None:
            return evidence_status(existing)
    parts = EvidenceParts(agent={}, bundle={}, consumers=[], pods=[], events=[])
    for report in agents.values():
        try:
            await _gather_agent(api, namespace, report, parts)
        except ApiError as error:
            parts.errors.append(f"agent {report.agent}: {error}")
    parts.events.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    data, truncated = build_evidence(
        EvidenceParts(
            agent=parts.agent,
            bundle={"bundle.json": json.dumps(parts.bundle)},
            consumers=parts.consumers,
            pods=parts.pods,
            events=parts.events,
            logs=parts.logs,
            errors=parts.errors,
        ),
        captured_at=captured_at,
    )
    owner = names.owner_reference("AgentIncident", meta["name"], meta["uid"])
    body = evidence_configmap(
        namespace, meta["name"], owner, agents=sorted(agents), data=data, truncated=truncated, captured_at=captured_at
    )
    # A previous pass that died after creating it: the first capture stands (evidence is immutable).
    created, _ = await api.create_or_get(CONFIGMAPS, namespace, body)
    return evidence_status(created)
