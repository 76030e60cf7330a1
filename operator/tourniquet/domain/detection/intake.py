"""Signals in, incidents out: a firing rule or an Alertmanager alert becomes a signal, and a signal opens or
updates an incident.

A signal is identified by its fingerprint: namespace + agent + rule name. While an incident with that
fingerprint is open, a repeat updates it; otherwise a new incident is created under a name derived from the
fingerprint and the time the signal started, so a repeat of the same episode (after an operator restart, say)
hits 409 AlreadyExists instead of opening a second one."""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tourniquet.domain import names
from tourniquet.domain.conditions import parse_time, rfc3339
from tourniquet.domain.detection.promql import describe_samples
from tourniquet.models import Severity
from tourniquet.models.agentincident import (
    AgentIncidentStatus,
    DetectionRecord,
    IncidentClass,
    TimelineEntry,
    TimelineEvent,
    Timings,
)
from tourniquet.models.common import DNS_LABEL, DNS_SUBDOMAIN

if TYPE_CHECKING:
    from tourniquet.domain.detection.promql import Sample
    from tourniquet.domain.detection.rules import CompiledRule


SOURCE_PROMETHEUS = "prometheus"


SOURCE_ALERTMANAGER = "alertmanager"


LABEL_FINGERPRINT = f"{names.PREFIX}/fingerprint"


LABEL_RULE = f"{names.PREFIX}/rule"


LABEL_SOURCE = f"{names.PREFIX}/source"


ANNOTATION_SIGNAL = f"{names.PREFIX}/signal"  # namespace/agent/rule, readable (the label is its hash)


SUMMARY_LIMIT = 1024


def fingerprint(namespace: str, agent: str, name: str) -> str:
    """The identity of a signal: namespace + agent + rule (or alert) name. Safe as a label value."""
    return hashlib.sha256(f"{namespace}/{agent}/{name}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Signal:
    """A rule firing, or an alert, on one agent: what opens or updates an incident."""

    namespace: str
    agent: str
    name: str  # the rule name, or the alert's alertname
    source: str  # prometheus | alertmanager
    severity: Severity
    incident_class: IncidentClass
    summary: str
    started_at: datetime  # when the signal started (rule activeAt, alert startsAt)
    start_measured: bool = True  # False: started_at is only when the operator first saw the samples

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.namespace, self.agent, self.name)

    @property
    def readable(self) -> str:
        return f"{self.namespace}/{self.agent}/{self.name}"


def slug(text: str, limit: int = 40) -> str:
    """A DNS-label-safe rendering of a rule or alert name."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", re.sub(r"([a-z0-9])([A-Z])", r"\1-\2", text).lower()).strip("-")
    return cleaned[:limit].strip("-") or "signal"


def incident_name(signal: Signal) -> str:
    """`<agent>-<rule>-<hash of fingerprint and start>`: the same episode always gets the same name. The start
    is taken to the second, as the agent's status records a rule's activeAt, so the name an operator derives
    after a restart (from that status) is the name it derived before."""
    episode = hashlib.sha256(f"{signal.fingerprint}@{rfc3339(signal.started_at)}".encode()).hexdigest()[:10]
    stem = f"{signal.agent}-{slug(signal.name)}"
    limit = 253 - len(episode) - 1
    if len(stem) > limit:
        stem = stem[:limit].rstrip("-.")
    return f"{stem}-{episode}"


def build_incident(signal: Signal) -> dict[str, Any]:
    """The AgentIncident a new signal opens; the agent's severity playbook does the rest."""
    labels = {
        names.LABEL_MANAGED_BY: names.MANAGED_BY,
        LABEL_FINGERPRINT: signal.fingerprint,
        LABEL_SOURCE: signal.source,
        LABEL_RULE: slug(signal.name, 63),
    }
    if len(signal.agent) <= 63:
        labels[names.LABEL_AGENT] = signal.agent
    return {
        "apiVersion": "tourniquet.dev/v1alpha1",
        "kind": "AgentIncident",
        "metadata": {
            "name": incident_name(signal),
            "namespace": signal.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_SIGNAL: signal.readable},
        },
        "spec": {
            "agents": [signal.agent],
            "severity": signal.severity.value,
            "class": signal.incident_class.value,
            "summary": signal.summary[:SUMMARY_LIMIT],
            "window": {"start": rfc3339(signal.started_at)},
        },
    }


def detected_entry(signal: Signal) -> dict[str, Any]:
    """The timeline's first entry, at the signal's start: the threshold crossing in Prometheus's data (a
    rule), or the alert's startsAt (Alertmanager)."""
    if signal.source == SOURCE_ALERTMANAGER:
        message = f"alert {signal.name} started firing (its startsAt)"
    elif signal.start_measured:
        message = f"rule {signal.name} crossed its threshold (its first samples in Prometheus's data)"
    else:
        message = (
            f"rule {signal.name} returned samples when the operator first evaluated it (Prometheus's data did "
            "not show when they began)"
        )
    entry = TimelineEntry(
        time=_micro(signal.started_at), event=TimelineEvent.DETECTED, message=message, agent=signal.agent
    )
    return entry.to_status()


def first_detection(signal: Signal, now: datetime) -> dict[str, Any]:
    """The new incident's first status: `detection`, the `Detected` timeline entry (`Opened` follows) and how
    long detection took, from the signal's start (`timings.detectedSeconds`) when that start was measured."""
    detection = DetectionRecord(
        fingerprint=signal.fingerprint,
        rule=signal.name,
        source=signal.source,
        count=1,
        first_seen=_micro(now),
        last_seen=_micro(now),
    )
    measured = Timings(detected_seconds=round(latency_seconds(signal.started_at, now), 3))
    timings = {"timings": measured} if signal.start_measured else {}
    return AgentIncidentStatus(detection=detection, timeline=[detected_entry(signal)], **timings).to_status()


def repeated_detection(incident: dict[str, Any], signal: Signal, now: datetime) -> dict[str, Any]:
    """An open incident's `status.detection` after one more sighting of its signal."""
    previous = (incident.get("status") or {}).get("detection") or {}
    return DetectionRecord(
        fingerprint=signal.fingerprint,
        rule=previous.get("rule") or signal.name,
        source=previous.get("source") or signal.source,
        count=int(previous.get("count") or 1) + 1,
        first_seen=previous.get("firstSeen") or _micro(signal.started_at),
        last_seen=_micro(now),
        cleared_at=None,
    ).to_status()


def cleared_detection(incident: dict[str, Any], at: datetime) -> dict[str, Any] | None:
    """`status.detection` recording that the source says the signal is gone; None if already recorded."""
    previous = (incident.get("status") or {}).get("detection") or {}
    if previous.get("clearedAt"):
        return None
    return {"clearedAt": _micro(at)}


def is_open(incident: dict[str, Any]) -> bool:
    return not (incident.get("spec") or {}).get("resolved") and not incident["metadata"].get("deletionTimestamp")


def oldest_open(incidents: list[dict[str, Any]]) -> dict[str, Any] | None:
    candidates = [i for i in incidents if is_open(i)]
    return min(
        candidates, key=lambda i: (i["metadata"].get("creationTimestamp") or "", i["metadata"]["name"]), default=None
    )


def _micro(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rule_signal(
    namespace: str,
    agent: str,
    rule: CompiledRule,
    samples: list[Sample],
    active_at: datetime,
    *,
    measured: bool = True,
) -> Signal:
    """The signal of a firing rule (`measured`: its activeAt is the crossing Prometheus's data show)."""
    summary = f"Rule {rule.name} fired on {agent}: {rule.description} ({describe_samples(samples)})"
    return Signal(
        namespace,
        agent,
        rule.name,
        SOURCE_PROMETHEUS,
        rule.severity,
        rule.incident_class,
        summary,
        active_at,
        start_measured=measured,
    )


class PayloadError(ValueError):
    """The webhook body is not an Alertmanager notification."""


SEVERITY_WORDS = {
    "sev1": Severity.SEV1,
    "sev2": Severity.SEV2,
    "sev3": Severity.SEV3,
    "critical": Severity.SEV1,
    "page": Severity.SEV1,
    "error": Severity.SEV2,
    "warning": Severity.SEV2,
    "info": Severity.SEV3,
}


@dataclass(frozen=True)
class Alert:
    """One alert of a notification, mapped to an agent."""

    index: int
    firing: bool
    alertname: str
    agent: str
    namespace: str | None  # None: the agent's namespace is looked up by name
    severity: Severity
    incident_class: IncidentClass
    summary: str
    starts_at: datetime
    ends_at: datetime | None

    def signal(self, namespace: str) -> Signal:
        return Signal(
            namespace,
            self.agent,
            self.alertname,
            SOURCE_ALERTMANAGER,
            self.severity,
            self.incident_class,
            self.summary,
            self.starts_at,
        )


@dataclass(frozen=True)
class Refusal:
    index: int
    alertname: str
    reason: str


@dataclass
class Notification:
    alerts: list[Alert] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)


def parse_notification(payload: Any, now: datetime) -> Notification:
    """Read an Alertmanager webhook body (version 4); PayloadError if it is not one at all."""
    if not isinstance(payload, dict):
        raise PayloadError("the body is not a JSON object (expected an Alertmanager webhook notification)")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("the body has no 'alerts' list (expected an Alertmanager webhook notification)")
    result = Notification()
    for index, raw in enumerate(alerts):
        parsed = _parse_alert(index, raw, now)
        (result.refused if isinstance(parsed, Refusal) else result.alerts).append(parsed)  # type: ignore[arg-type]
    return result


def _parse_alert(index: int, raw: Any, now: datetime) -> Alert | Refusal:
    if not isinstance(raw, dict):
        return Refusal(index, "", "not an object")
    labels: dict[str, Any] = raw["labels"] if isinstance(raw.get("labels"), dict) else {}
    annotations: dict[str, Any] = raw["annotations"] if isinstance(raw.get("annotations"), dict) else {}
    alertname = str(labels.get("alertname") or "")
    if not alertname:
        return Refusal(index, alertname, "no alertname label")
    agent = labels.get("agent")
    if not isinstance(agent, str) or not agent:
        return Refusal(index, alertname, "no agent label (the AgentDeployment's name)")
    if not re.match(DNS_SUBDOMAIN, agent) or len(agent) > 253:
        return Refusal(index, alertname, f"agent label {agent!r} is not a valid AgentDeployment name")
    namespace = labels.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or not re.match(DNS_LABEL, namespace)):
        return Refusal(index, alertname, f"namespace label {namespace!r} is not a valid namespace name")
    severity_text = str(labels.get("severity") or "SEV2")
    severity = SEVERITY_WORDS.get(severity_text.lower())
    if severity is None:
        return Refusal(
            index, alertname, f"severity {severity_text!r} is not SEV1, SEV2 or SEV3 (or critical, warning, info)"
        )
    class_text = str(labels.get("class") or IncidentClass.OTHER.value)
    try:
        incident_class = IncidentClass(class_text)
    except ValueError:
        known = ", ".join(c.value for c in IncidentClass)
        return Refusal(index, alertname, f"class {class_text!r} is not one of {known}")
    status = raw.get("status", "firing")
    if status not in ("firing", "resolved"):
        return Refusal(index, alertname, f"status {status!r} is neither firing nor resolved")
    starts_at = parse_time(raw.get("startsAt")) or now
    ends_at = parse_time(raw.get("endsAt"))
    if ends_at is not None and ends_at.year <= 1:
        ends_at = None  # Alertmanager's zero time: no end yet
    summary = str(annotations.get("summary") or annotations.get("description") or "")
    summary = f"Alert {alertname} on {agent}" + (f": {summary}" if summary else "")
    return Alert(
        index,
        status == "firing",
        alertname,
        agent,
        namespace,
        severity,
        incident_class,
        summary,
        starts_at,
        ends_at if status != "firing" else None,
    )


def namespace_served(namespace: str, patterns: Sequence[str] | None) -> bool:
    """Whether an operator serving `patterns` (its `--namespace` values; None or empty: every namespace)
    watches `namespace`. A pattern is Kopf's: comma-separated globs, where `!glob` excludes what an earlier
    glob matched and a later glob matches again only what the first one did (a leading `!` implies `*`)."""
    return not patterns or any(_matches(namespace, pattern) for pattern in patterns)


def _matches(namespace: str, pattern: str) -> bool:
    globs = [glob.strip() for glob in pattern.split(",")]
    if globs[0].startswith("!"):
        globs.insert(0, "*")
    first = fnmatch.fnmatchcase(namespace, globs[0])
    matched = first
    for glob in globs[1:]:
        if glob.startswith("!"):
            matched = matched and not fnmatch.fnmatchcase(namespace, glob.lstrip("!"))
        elif first and fnmatch.fnmatchcase(namespace, glob):
            matched = True
    return matched


def is_pattern(namespace: str) -> bool:
    """A `--namespace` value that is a pattern, not one namespace's name."""
    return any(c in namespace for c in "*?[!,")


def latency_seconds(started_at: datetime, now: datetime) -> float:
    return max(0.0, (now - started_at).total_seconds())
