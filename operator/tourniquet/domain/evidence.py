"""Evidence: redacted, size-bounded, captured before the drain kills the pods (pure part)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tourniquet.domain import names
from tourniquet.models.agentincident import EvidenceStatus
from tourniquet.shared.redaction import redact, redact_text

# Stay well under the 1 MiB ConfigMap limit, with room for keys and metadata.
EVIDENCE_LIMIT = 900 * 1024
LOG_LINES = 200
@dataclass
class EvidenceParts:
    """What was gathered; logs are per pod, newest lines last."""

    agent: dict[str, Any]
    bundle: dict[str, str]
    consumers: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    events: list[dict[str, Any]]
    logs: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _slim_pod(pod: dict[str, Any]) -> dict[str, Any]:
    status = pod.get("status") or {}
    return {
        "name": (pod.get("metadata") or {}).get("name"),
        "phase": status.get("phase"),
        "node": (pod.get("spec") or {}).get("nodeName"),
        "conditions": status.get("conditions"),
        "containerStatuses": status.get("containerStatuses"),
    }


def _slim_event(event: dict[str, Any]) -> dict[str, Any]:
    involved = event.get("involvedObject") or {}
    return {
        "time": event.get("lastTimestamp")
        or event.get("eventTime")
        or (event.get("metadata") or {}).get("creationTimestamp"),
        "type": event.get("type"),
        "reason": event.get("reason"),
        "object": f"{involved.get('kind')}/{involved.get('name')}",
        "message": event.get("message"),
    }


def one_per_line(value: dict[str, Any] | list[Any]) -> str:
    """JSON with one entry per line: greppable, and written by the C encoder (an indented dump is pure
    Python, several times slower, and evidence is captured in the middle of a containment)."""
    if isinstance(value, dict):
        entries = [f"{json.dumps(key)}: {json.dumps(item, sort_keys=True)}" for key, item in sorted(value.items())]
        return "{\n" + ",\n".join(entries) + "\n}" if entries else "{}"
    entries = [json.dumps(item, sort_keys=True) for item in value]
    return "[\n" + ",\n".join(entries) + "\n]" if entries else "[]"


def build_evidence(
    parts: EvidenceParts, *, captured_at: str, limit: int = EVIDENCE_LIMIT
) -> tuple[dict[str, str], bool]:
    """ConfigMap data for the evidence, redacted and bounded; True when something was cut to fit."""
    truncated = False
    data = {
        "agent.json": one_per_line(redact(parts.agent)),
        "bundle.json": redact_text(parts.bundle.get("bundle.json", "")),
        "consumers.json": one_per_line(redact(parts.consumers)),
        "pods.json": one_per_line([_slim_pod(p) for p in parts.pods]),
    }
    events = [_slim_event(e) for e in parts.events][-100:]
    logs = {
        pod: [redact_text(line) for line in text.splitlines()[-LOG_LINES:]] for pod, text in sorted(parts.logs.items())
    }

    def size() -> int:
        body = sum(len(k) + len(v.encode()) for k, v in data.items())
        return body + len(json.dumps(events)) + sum(len("\n".join(lines)) + len(pod) + 8 for pod, lines in logs.items())

    # Cut the oldest log lines first, then the oldest events, until it fits.
    while size() > limit and any(logs.values()):
        longest = max(logs, key=lambda p: len(logs[p]))
        logs[longest] = logs[longest][len(logs[longest]) // 2 + 1 :]
        truncated = True
    while size() > limit and events:
        events = events[len(events) // 2 + 1 :]
        truncated = True
    data["events.json"] = one_per_line(redact(events))
    data["logs.txt"] = "".join(f"==> {pod} <==\n" + "\n".join(lines) + "\n" for pod, lines in logs.items())
    data["manifest.json"] = one_per_line(
        {"capturedAt": captured_at, "truncated": truncated, "errors": parts.errors, "logLines": LOG_LINES}
    )

    def final_size() -> int:
        return sum(len(k) + len(v.encode()) for k, v in data.items())

    for key in ("agent.json", "consumers.json", "bundle.json", "pods.json"):  # last resort: a huge document
        excess = final_size() - limit
        if excess > 0:
            data[key] = data[key][: max(0, len(data[key]) - excess)]
            truncated = True
    return data, truncated


def evidence_configmap(
    namespace: str,
    incident: str,
    owner: dict[str, object],
    *,
    agents: list[str],
    data: dict[str, str],
    truncated: bool,
    captured_at: str,
) -> dict[str, Any]:
    """The evidence ConfigMap `<incident>-evidence`: immutable, owned by the incident."""
    labels = {
        names.LABEL_MANAGED_BY: names.MANAGED_BY,
        names.LABEL_COMPONENT: "evidence",
        f"{names.PREFIX}/incident": incident[:63].rstrip("-."),
    }
    annotations = {
        f"{names.PREFIX}/captured-at": captured_at,
        f"{names.PREFIX}/truncated": str(truncated).lower(),
        f"{names.PREFIX}/agents": ",".join(agents),
    }
    return names.owned(
        "v1",
        "ConfigMap",
        names.evidence_configmap(incident),
        namespace,
        owner,
        labels=labels,
        annotations=annotations,
        immutable=True,
        data=data,
    )


def evidence_status(cm: dict[str, Any]) -> dict[str, Any]:
    """The incident's status.evidence for an evidence ConfigMap."""
    annotations = (cm.get("metadata") or {}).get("annotations") or {}
    data = cm.get("data") or {}
    return EvidenceStatus(
        config_map=cm["metadata"]["name"],
        captured_at=annotations.get(f"{names.PREFIX}/captured-at") or cm["metadata"].get("creationTimestamp"),
        bytes=sum(len(k) + len(v.encode()) for k, v in data.items()),
        truncated=annotations.get(f"{names.PREFIX}/truncated") == "true",
    ).to_status()
