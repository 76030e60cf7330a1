"""Watch freshness: is the operator still receiving watch events?

Kopf's liveness endpoint stays green when a watch stream silently freezes (behind a load balancer, or a
watcher task that died): the operator looks alive and never hears of a new incident. Two signals say so:

* **Last-event age**, per watched resource: the time since the operator last received any watch event
  of that kind. Cheap and always on, but it also grows on a quiet cluster, so on its own it cannot tell
  a frozen stream from an idle one.
* **The canary**: every ``interval`` seconds the operator writes the time into an annotation of an
  AgentIncident it owns (``tourniquet-canary``, labelled ``tourniquet.dev/canary``, resolved, never acted
  on), and records when the AgentIncidents watch delivers that write back. It travels the path that
  containment depends on: the API server, the network, the watch stream, Kopf's queue, a handler. When
  a write has not come back within ``stale`` seconds, the watch is **stale**. In namespaced mode there
  is one canary per served namespace, because Kopf opens one stream per namespace.

This module holds the settings, the canary's body and the bookkeeping (no I/O, no kopf); the handlers in
``tourniquet.handlers.freshness`` write the canary and feed the events in. Times are monotonic seconds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tourniquet import observability
from tourniquet.domain import names
from tourniquet.domain.settings import seconds_from_env

ENV_INTERVAL = "TOURNIQUET_CANARY_SECONDS"
ENV_STALE = "TOURNIQUET_CANARY_STALE_SECONDS"
ENV_NAMESPACE = "TOURNIQUET_CANARY_NAMESPACE"
ENV_POD_NAMESPACE = "POD_NAMESPACE"
DEFAULT_INTERVAL_SECONDS = 30.0

WATCHED_RESOURCES = ("agentdeployments", "agentincidents")


@dataclass(frozen=True)
class FreshnessSettings:
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS
    stale_seconds: float = 3 * DEFAULT_INTERVAL_SECONDS
    namespaces: tuple[str, ...] = ()  # where the canaries live; empty: the canary is off
    off_reason: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str], served: Iterable[str] | None = None) -> FreshnessSettings:
        """`served`: the namespaces the operator serves (`tourniquet run -n`); None or empty: all of them.

        Where the canaries live: ``TOURNIQUET_CANARY_NAMESPACE`` (comma-separated) if set; else each served
        namespace when the operator serves a list; else the operator's own namespace (``POD_NAMESPACE``,
        which the chart sets). Raises ValueError on a setting that is not a number.
        """
        interval = seconds_from_env(environ, ENV_INTERVAL, DEFAULT_INTERVAL_SECONDS)
        stale = seconds_from_env(environ, ENV_STALE, 3 * interval if interval else 3 * DEFAULT_INTERVAL_SECONDS)
        if stale <= 0:
            raise ValueError(f"{ENV_STALE} must be more than 0")
        if interval == 0:
            return cls(interval, stale, (), f"{ENV_INTERVAL}=0")
        explicit = [n.strip() for n in environ.get(ENV_NAMESPACE, "").split(",") if n.strip()]
        literal = [n for n in served or () if not any(c in n for c in "*?[!")]
        if explicit:
            return cls(interval, stale, tuple(explicit))
        if served:
            if literal:
                return cls(interval, stale, tuple(literal))
            return cls(interval, stale, (), f"the served namespaces are patterns: set {ENV_NAMESPACE}")
        if environ.get(ENV_POD_NAMESPACE):
            return cls(interval, stale, (environ[ENV_POD_NAMESPACE],))
        return cls(interval, stale, (), f"no namespace to keep it in: set {ENV_POD_NAMESPACE} or {ENV_NAMESPACE}")


# ---------------------------------------------------------------- the canary object


def canary_body(namespace: str, interval_seconds: float) -> dict[str, Any]:
    """The canary: a resolved AgentIncident that every incident handler skips (by its label)."""
    return {
        "apiVersion": "tourniquet.dev/v1alpha1",
        "kind": "AgentIncident",
        "metadata": {
            "name": names.CANARY_NAME,
            "namespace": namespace,
            "labels": {names.LABEL_CANARY: "true", names.LABEL_MANAGED_BY: names.MANAGED_BY},
        },
        "spec": {
            "agents": [names.CANARY_NAME],
            "severity": "SEV3",
            "class": "other",
            "summary": (
                f"Not an incident: the operator's watch-freshness canary, written every {interval_seconds:g}s "
                "and never acted on."
            ),
            "resolved": True,
        },
    }


def canary_token(now: datetime) -> str:
    """The annotation's value: the wall-clock time of the write, fixed width, so later tokens sort higher."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canary_patch(token: str) -> dict[str, Any]:
    return {"metadata": {"annotations": {names.ANNOTATION_CANARY_WRITTEN: token}}}


def is_canary(body: Mapping[str, Any]) -> bool:
    labels = (body.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(names.LABEL_CANARY) == "true")


def canary_token_of(body: Mapping[str, Any]) -> str | None:
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    token = annotations.get(names.ANNOTATION_CANARY_WRITTEN)
    return str(token) if token else None


# ---------------------------------------------------------------- bookkeeping


@dataclass
class _Canary:
    pending: tuple[str, float] | None = None  # the oldest write not yet delivered back: (token, written at)
    returned_at: float | None = None
    lag: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class CanaryVerdict:
    namespace: str
    stale: bool
    lag: float | None  # the last round trip, or how long the pending write has been out if that is longer
    message: str


@dataclass
class WatchFreshness:
    """What the operator has seen of its watches; fed by the handlers, read by /metrics and the probe."""

    settings: FreshnessSettings
    started_at: float
    last_event: dict[str, float] = field(default_factory=dict)
    canaries: dict[str, _Canary] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.canaries = {namespace: _Canary() for namespace in self.settings.namespaces}

    def event_seen(self, resource: str, now: float) -> None:
        self.last_event[resource] = now

    def canary_written(self, namespace: str, token: str, now: float) -> None:
        """Called before the write is sent: its event may arrive before the API's answer."""
        canary = self.canaries.setdefault(namespace, _Canary())
        if canary.pending is None:
            canary.pending = (token, now)

    def canary_failed(self, namespace: str, token: str, error: str) -> None:
        canary = self.canaries.setdefault(namespace, _Canary())
        canary.error = error
        if canary.pending is not None and canary.pending[0] == token:
            canary.pending = None  # that write never happened; the age since the last return still counts

    def canary_seen(self, namespace: str, token: str | None, now: float) -> float | None:
        """The watch delivered the canary carrying `token`; the round trip, if it answers a pending write.

        A token at least as new as the pending one answers it: two writes close together may reach the
        handler as one event (Kopf batches events per object), and with several replicas the newest write
        may be another replica's.
        """
        canary = self.canaries.get(namespace)
        if canary is None or canary.pending is None or token is None or token < canary.pending[0]:
            return None
        canary.lag = max(now - canary.pending[1], 0.0)
        canary.returned_at = now
        canary.pending = None
        canary.error = None
        return canary.lag

    def verdicts(self, now: float) -> list[CanaryVerdict]:
        stale_after = self.settings.stale_seconds
        result = []
        for namespace, canary in sorted(self.canaries.items()):
            lag = canary.lag
            if canary.pending is not None:
                out = now - canary.pending[1]
                lag = max(lag or 0.0, out)
                if out > stale_after:
                    result.append(
                        CanaryVerdict(
                            namespace,
                            True,
                            lag,
                            f"the canary written {out:.0f}s ago has not come back through the AgentIncidents "
                            f"watch (threshold {stale_after:g}s)",
                        )
                    )
                    continue
            quiet = now - (canary.returned_at if canary.returned_at is not None else self.started_at)
            if quiet > stale_after + self.settings.interval_seconds:
                why = f": {canary.error}" if canary.error else ""
                result.append(
                    CanaryVerdict(namespace, True, lag, f"no canary has come back for {quiet:.0f}s{why}")
                )
                continue
            message = f"round trip {canary.lag:.3f}s" if canary.lag is not None else "waiting for the first canary"
            if canary.pending is not None and lag is not None and lag > (canary.lag or 0.0):
                message += f"; the canary written {lag:.1f}s ago is not back yet"
            result.append(CanaryVerdict(namespace, False, lag, message))
        return result

    def event_ages(self, now: float) -> dict[str, float]:
        return {r: now - self.last_event.get(r, self.started_at) for r in WATCHED_RESOURCES}

    def report(self, now: float) -> dict[str, Any]:
        """For Kopf's health endpoint: `status` is fresh, stale or off, with the details."""
        verdicts = self.verdicts(now)
        status = "off" if not verdicts else "stale" if any(v.stale for v in verdicts) else "fresh"
        return {
            "status": status,
            **({"canaryOff": self.settings.off_reason} if not verdicts else {}),
            "canaries": {v.namespace: {"stale": v.stale, "message": v.message} for v in verdicts},
            "lastEventAgeSeconds": {r: round(age, 3) for r, age in self.event_ages(now).items()},
        }

    def publish(self, now: float) -> None:
        """Set the watch gauges (before a scrape)."""
        for resource, age in self.event_ages(now).items():
            observability.WATCH_LAST_EVENT_AGE.labels(resource).set(age)
        for verdict in self.verdicts(now):
            observability.WATCH_STALE.labels(verdict.namespace).set(1 if verdict.stale else 0)
            if verdict.lag is not None:
                observability.WATCH_CANARY_LAG.labels(verdict.namespace).set(verdict.lag)

    def forget(self) -> None:
        """The operator is stopping: its gauges no longer describe anything."""
        for resource in WATCHED_RESOURCES:
            _remove(observability.WATCH_LAST_EVENT_AGE, resource)
        for namespace in self.canaries:
            _remove(observability.WATCH_STALE, namespace)
            _remove(observability.WATCH_CANARY_LAG, namespace)


def _remove(gauge: Any, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)
