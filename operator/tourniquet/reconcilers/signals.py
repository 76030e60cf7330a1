"""Signals into incidents: a firing rule or an Alertmanager alert opens an incident, or updates the open one with
its fingerprint (one incident per episode: a repeat of the same episode hits 409 AlreadyExists instead of
opening a second), and a cleared rule is recorded on it. receive_alerts is the Alertmanager receiver's pass."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tourniquet import observability
from tourniquet.adapters.kube import AGENTDEPLOYMENTS, AGENTINCIDENTS, ApiError, KubeApi
from tourniquet.domain import detection as decide
from tourniquet.domain import names
from tourniquet.domain.detection import Signal
from tourniquet.domain.incident import micro_time
from tourniquet.reconcilers.events import post_events_later
from tourniquet.reconcilers.lane import Lane
from tourniquet.reconcilers.queue import Hold, unshared

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class SignalOutcome:
    outcome: str  # opened | updated | suppressed | cleared | ignored
    incident: str | None
    message: str

    @property
    def open(self) -> bool:
        return self.outcome in ("opened", "updated", "cleared")


async def record_signal(
    api: KubeApi,
    signal: Signal,
    *,
    now: datetime | None = None,
    known: str | None = None,
    hold: Hold = unshared,
    lane: Lane | None = None,
) -> SignalOutcome:
    """Open an incident for `signal`, or count one more sighting on the open incident with its fingerprint.

    `known`: the incident this signal's episode opened before (skips the lookup). A new incident's name
    comes from the fingerprint and the signal's start, so a repeat of the same episode that finds no open
    incident by label (a stale read, a restart) hits 409 AlreadyExists and is recognised. An episode whose
    incident a human resolved is not reopened: the signal has to clear and start again. `hold`: the incidents'
    work queue's, so no pass of an incident runs while this writes on it. `lane`: the operator's, on which the
    new incident's Events wait for containment to be quiet (a fresh one if not given).
    """
    now = now or _now()
    namespace = signal.namespace
    if known is not None:
        updated = await _count_sighting(api, namespace, known, signal, now, hold)
        if updated is not None:
            return updated
    candidate = decide.oldest_open(await _by_fingerprint(api, namespace, signal.fingerprint))
    if candidate is not None:
        updated = await _count_sighting(api, namespace, candidate["metadata"]["name"], signal, now, hold)
        if updated is not None:
            return updated
    body = decide.build_incident(signal)
    name = body["metadata"]["name"]
    async with hold((namespace, name)):
        body["metadata"].setdefault("annotations", {})[names.ANNOTATION_OPENED_AT] = micro_time(_now())
        try:
            created = await api.create(AGENTINCIDENTS, namespace, body)
        except ApiError as error:
            if not error.already_exists:
                raise
            existing = await api.get_or_none(AGENTINCIDENTS, namespace, name)
            if existing is not None and decide.is_open(existing):
                repeated = decide.repeated_detection(existing, signal, now)
                await _patch_detection(api, namespace, name, repeated)
                _count(signal.source, "updated")
                return SignalOutcome("updated", name, f"counted on open incident {name} (found by its name)")
            _count(signal.source, "suppressed")
            return SignalOutcome(
                "suppressed",
                name,
                f"incident {name} for this episode of {signal.readable} is resolved; it is not reopened until the "
                "signal clears and starts again",
            )
        # The detection record (and the timeline's Detected entry, which Opened follows) goes in before the
        # incident handler (waiting on this lock) first reads it.
        first = decide.first_detection(signal, now)
        await api.patch(AGENTINCIDENTS, namespace, name, {"status": first}, subresource="status")
    post_events_later(api, created, first["timeline"], lane or Lane())
    if signal.start_measured:
        latency = decide.latency_seconds(signal.started_at, now)
        observability.DETECTION_LATENCY.labels(signal.source).observe(latency)
    _count(signal.source, "opened")
    log.info("Opened AgentIncident %s/%s (%s): %s", namespace, name, signal.severity.value, signal.summary)
    return SignalOutcome("opened", name, f"opened incident {name}")


async def record_cleared(
    api: KubeApi,
    namespace: str,
    agent: str,
    name: str,
    source: str,
    at: datetime,
    *,
    known: str | None = None,
    hold: Hold = unshared,
) -> SignalOutcome:
    """The source says the signal is gone: record it on the open incident, which stays open for a human."""

    async def clear(incident: str) -> SignalOutcome | None:
        async with hold((namespace, incident)):
            fresh = await api.get_or_none(AGENTINCIDENTS, namespace, incident)
            if fresh is None or not decide.is_open(fresh):
                return None
            patch = decide.cleared_detection(fresh, at)
            if patch is not None:
                await _patch_detection(api, namespace, incident, patch)
                _count(source, "cleared")
        return SignalOutcome("cleared", incident, f"recorded on open incident {incident}; a human resolves it")

    if known is not None:
        done = await clear(known)
        if done is not None:
            return done
    candidate = decide.oldest_open(await _by_fingerprint(api, namespace, decide.fingerprint(namespace, agent, name)))
    if candidate is not None:
        done = await clear(candidate["metadata"]["name"])
        if done is not None:
            return done
    return SignalOutcome("ignored", None, f"no open incident for {namespace}/{agent}/{name}")


async def _by_fingerprint(api: KubeApi, namespace: str, fp: str) -> list[dict[str, Any]]:
    return await api.list(AGENTINCIDENTS, namespace, label_selector=f"{decide.LABEL_FINGERPRINT}={fp}")


async def _count_sighting(
    api: KubeApi, namespace: str, name: str, signal: Signal, now: datetime, hold: Hold
) -> SignalOutcome | None:
    """One more sighting on incident `name` if it is open (read fresh under its lock); None otherwise."""
    async with hold((namespace, name)):
        fresh = await api.get_or_none(AGENTINCIDENTS, namespace, name)
        labels = (fresh or {}).get("metadata", {}).get("labels") or {}
        if fresh is None or not decide.is_open(fresh) or labels.get(decide.LABEL_FINGERPRINT) != signal.fingerprint:
            return None
        await _patch_detection(api, namespace, name, decide.repeated_detection(fresh, signal, now))
    _count(signal.source, "updated")
    return SignalOutcome("updated", name, f"counted on open incident {name}")


async def _patch_detection(api: KubeApi, namespace: str, name: str, record: dict[str, Any]) -> None:
    await api.patch(AGENTINCIDENTS, namespace, name, {"status": {"detection": record}}, subresource="status")


def _count(source: str, outcome: str) -> None:
    observability.SIGNALS.labels(source, outcome).inc()


@dataclass(frozen=True)
class AlertOutcome:
    index: int
    alertname: str
    agent: str | None
    outcome: str  # opened | updated | suppressed | cleared | ignored | refused
    incident: str | None = None
    reason: str = ""
    unwatched: bool = False  # refused: its namespace is not one the operator watches

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"index": self.index, "alertname": self.alertname, "outcome": self.outcome}
        if self.agent:
            entry["agent"] = self.agent
        if self.incident:
            entry["incident"] = self.incident
        if self.reason:
            entry["reason"] = self.reason
        return entry


async def receive_alerts(
    api: KubeApi,
    notification: decide.Notification,
    *,
    now: datetime | None = None,
    served: Sequence[str] | None = None,
    hold: Hold = unshared,
    lane: Lane | None = None,
) -> list[AlertOutcome]:
    """Map each alert to its agent and open, count or clear its incident (same fingerprint rules as rules).

    `served`: the namespaces the operator watches (its `--namespace` values; None: all). An alert for an
    agent elsewhere is refused as unwatched, and so is one whose namespace the API server forbids the
    operator to read (an operator that does not know its namespaces, with the chart's RBAC). A resolved
    alert never resolves the incident (a human does); it is recorded on it. Other Kubernetes API errors
    propagate (the receiver answers 503, and Alertmanager retries).
    """
    now = now or _now()
    outcomes = [AlertOutcome(r.index, r.alertname, None, "refused", reason=r.reason) for r in notification.refused]
    everywhere: list[dict[str, Any]] | None = None
    for alert in notification.alerts:
        namespace = alert.namespace

        def refuse(reason: str, *, unwatched: bool = False, alert: decide.Alert = alert) -> None:
            outcomes.append(
                AlertOutcome(alert.index, alert.alertname, alert.agent, "refused", reason=reason, unwatched=unwatched)
            )

        if namespace is None:
            if everywhere is None:
                everywhere = await _served_agents(api, served)
            homes = sorted(a["metadata"]["namespace"] for a in everywhere if a["metadata"]["name"] == alert.agent)
            if len(homes) != 1:
                refuse(
                    f"no AgentDeployment named {alert.agent} in any namespace"
                    + (f" this operator watches ({', '.join(served)})" if served else "")
                    if not homes
                    else f"AgentDeployment {alert.agent} exists in namespaces {', '.join(homes)}: add a namespace label"
                )
                continue
            namespace = homes[0]
        elif not decide.namespace_served(namespace, served):
            refuse(
                f"namespace {namespace} is not watched by this operator (it watches {', '.join(served or ())})",
                unwatched=True,
            )
            continue
        else:
            try:
                found = await api.get_or_none(AGENTDEPLOYMENTS, namespace, alert.agent)
            except ApiError as error:
                if error.status != 403:
                    raise
                refuse(
                    f"namespace {namespace} is not watched by this operator (it may not read AgentDeployments "
                    f"there: {error.message})",
                    unwatched=True,
                )
                continue
            if found is None:
                refuse(f"AgentDeployment {alert.agent} not found in namespace {namespace}")
                continue
        if alert.firing:
            result = await record_signal(api, alert.signal(namespace), now=now, hold=hold, lane=lane)
        else:
            at = alert.ends_at or now
            result = await record_cleared(
                api, namespace, alert.agent, alert.alertname, decide.SOURCE_ALERTMANAGER, at, hold=hold
            )
        outcomes.append(
            AlertOutcome(alert.index, alert.alertname, alert.agent, result.outcome, result.incident, result.message)
        )
    return sorted(outcomes, key=lambda o: o.index)


async def _served_agents(api: KubeApi, served: Sequence[str] | None) -> list[dict[str, Any]]:
    """The AgentDeployments in the namespaces the operator watches: listed in each when they are names (the
    chart grants nothing more), else (every namespace, patterns, or not told which: `kopf run`) cluster-wide
    and filtered."""
    if served and not any(decide.is_pattern(n) for n in served):
        listed = await asyncio.gather(*(api.list(AGENTDEPLOYMENTS, n) for n in served))
        return [agent for agents in listed for agent in agents]
    return [a for a in await api.list(AGENTDEPLOYMENTS) if decide.namespace_served(a["metadata"]["namespace"], served)]
