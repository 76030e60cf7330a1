"""Evidence: redacted, size-bounded, captured before the drain kills the pods (pure part)."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from tourniquet.domain import names
from tourniquet.models.agentincident import EvidenceStatus

# Stay well under the 1 MiB ConfigMap limit, with room for keys and metadata.
EVIDENCE_LIMIT = 900 * 1024
LOG_LINES = 200
REDACTED = "[REDACTED]"

_SECRET_WORDS = (
    r"(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|credentials?|auth)"
)
_PATTERNS = [
    # Credentials after a scheme first, so the generic key=value rule below cannot stop at "Bearer".
    re.compile(r"(?i)(authorization:\s*(?:bearer|basic)\s+)(\S+)"),
    re.compile(r"(?i)(bearer\s+)([A-Za-z0-9._~+/-]{16,}=*)"),
    # key=value, key: value, "key": "value"
    # Bounded key lengths keep this linear on long lines (an unbounded [\w]* backtracks quadratically).
    re.compile(
        rf"(?i)(\"?[\w.-]{{0,40}}{_SECRET_WORDS}[\w.-]{{0,40}}\"?\s{{0,3}}[:=]\s{{0,3}}\"?)((?!\[REDACTED\])[^\s\",;]+)"
    ),
    re.compile(r"()(sk-[A-Za-z0-9_-]{16,})"),  # API keys in the style of LLM providers
    re.compile(r"()(AKIA[0-9A-Z]{16})"),  # AWS access key ids
    re.compile(r"()(eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"),  # JWTs
    re.compile(r"(-----BEGIN [A-Z ]*PRIVATE KEY-----)[\s\S]*?(?=-----END)"),
]
_SECRET_NAME = re.compile(rf"(?i){_SECRET_WORDS}")
# Every pattern above needs one of these (case-folded) to match; most strings in evidence (names, images,
# phases, a bundle's prompt) contain none. Substring tests on the case-folded text are far cheaper than
# seven substitutions, and than one case-insensitive regex (~150 ns per character).
_MAYBE_SECRET_WORDS = (
    "password", "passwd", "pwd", "secret", "token", "apikey", "api_key", "api-key", "accesskey", "access_key",
    "access-key", "privatekey", "private_key", "private-key", "credential", "auth", "bearer", "sk-", "akia",
    "eyj", "-----begin",
)  # fmt: skip


def redact_all_patterns(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def might_hold_secret(text: str) -> bool:
    folded = text.casefold()
    return any(word in folded for word in _MAYBE_SECRET_WORDS)


def redact_text(text: str) -> str:
    return redact_all_patterns(text) if might_hold_secret(text) else text


@functools.lru_cache(maxsize=4096)
def _secret_name(name: str) -> bool:
    """Whether a key or env var name says it holds a secret (the same few keys recur in every object)."""
    return _SECRET_NAME.search(name) is not None


def redact(value: Any, *, quick: bool = True) -> Any:
    """Redact a JSON-like value: secret-looking keys lose their values, strings are scrubbed.

    `quick`: a dict or list whose JSON text (keys included, characters unescaped) holds no secret word is
    returned as it is, without walking it in Python; a word it holds is found in every part it came from."""
    text = json.dumps(value, ensure_ascii=False, default=str) if quick and isinstance(value, dict | list) else None
    if text is not None and not might_hold_secret(text):
        return value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        # An env entry {"name": "API_TOKEN", "value": "..."} hides its value.
        secret_env = isinstance(value.get("name"), str) and _secret_name(value["name"]) and "value" in value
        for key, item in value.items():
            if (secret_env and key == "value") or (isinstance(item, str) and _secret_name(str(key))):
                out[key] = REDACTED
            else:
                out[key] = redact(item, quick=quick)
        return out
    if isinstance(value, list):
        return [redact(v, quick=quick) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


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
    data["manifest.json"] = json.dumps(
        {"capturedAt": captured_at, "truncated": truncated, "errors": parts.errors, "logLines": LOG_LINES},
        indent=1,
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
