"""The operator's own metrics, served on /metrics next to the Alertmanager receiver.

==============================================  =========  ===================================================
name                                            type       labels and meaning
==============================================  =========  ===================================================
``tourniquet_detection_latency_seconds``        histogram  ``source`` (prometheus|alertmanager): from the
                                                           moment the signal started (the rule first returned
                                                           samples, `for:` included; the alert's startsAt) to
                                                           its incident existing
``tourniquet_detection_evaluation_errors_total``  counter  ``reason``: queries that gave no verdict
                                                           (PrometheusUnreachable, PrometheusTimeout, ...,
                                                           QueryRejected for a rule Prometheus refused)
``tourniquet_detection_signals_total``          counter    ``source, outcome``: opened | updated | suppressed
                                                           (its episode's incident was resolved) | cleared
``tourniquet_incidents_open``                   gauge      ``severity, class``: open AgentIncidents
``tourniquet_containment_latency_seconds``      histogram  ``lever`` (a lever of levers.registry): from an
                                                           incident's start (its ``timings.startedAt``: when
                                                           it was opened, see ``startedFrom``) to the lever
                                                           observed applied;
                                                           ``lever="all"``: to every lever observed applied
                                                           (the incident Contained)
``tourniquet_incident_resolution_seconds``      histogram  from an incident's start to its resolution
``tourniquet_watch_last_event_age_seconds``     gauge      ``resource`` (agentdeployments|agentincidents):
                                                           since the last watch event of that resource (or
                                                           since start-up); grows on a quiet cluster too
``tourniquet_watch_canary_lag_seconds``         gauge      ``canary_namespace``: the canary's round trip,
                                                           from its write to the AgentIncidents watch
                                                           delivering it; while one is outstanding, the time
                                                           since it was written
``tourniquet_watch_stale``                      gauge      ``canary_namespace``: 1 when the canary has not
                                                           come back within the stale threshold
==============================================  =========  ===================================================

Counters and histograms are recorded into one registry per process (:data:`REGISTRY`), from any layer. The
gauges are derived from the operator's own state when /metrics is read (:class:`OperatorMetrics`, one per operator,
made at start-up): the open incidents from what its watch delivered (:class:`OpenIncidents`), the watch gauges
by :mod:`tourniquet.freshness` (:meth:`OperatorMetrics.before_scrape`). Imports nothing of Tourniquet.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry()
CONTENT_TYPE = CONTENT_TYPE_LATEST

ALL_LEVERS = "all"  # the containment-latency label of a whole incident

_LATENCY_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)
_CONTAINMENT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)

DETECTION_LATENCY = Histogram(
    "tourniquet_detection_latency_seconds",
    "From the start of a signal (the rule's threshold crossing in Prometheus's data, the alert's startsAt) to its "
    "incident existing.",
    ["source"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
EVALUATION_ERRORS = Counter(
    "tourniquet_detection_evaluation_errors",
    "Rule queries that gave no verdict, by reason.",
    ["reason"],
    registry=REGISTRY,
)
SIGNALS = Counter(
    "tourniquet_detection_signals",
    "Signals handled, by source and outcome (opened, updated, suppressed, cleared).",
    ["source", "outcome"],
    registry=REGISTRY,
)
CONTAINMENT_LATENCY = Histogram(
    "tourniquet_containment_latency_seconds",
    "From an incident's start (timings.startedAt) to a lever observed applied (lever=all: to every lever applied).",
    ["lever"],
    buckets=_CONTAINMENT_BUCKETS,
    registry=REGISTRY,
)
RESOLUTION = Histogram(
    "tourniquet_incident_resolution_seconds",
    "From an incident's start (timings.startedAt) to its resolution.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
COMPENSATIONS = Counter(
    "tourniquet_compensations",
    "Compensations of approved plans observed in the ledger, by outcome (done, failed, irreversible, skipped).",
    ["outcome"],
    registry=REGISTRY,
)
COMPENSATION_JOBS = Counter(
    "tourniquet_compensation_jobs_created",
    "Compensation Jobs the operator created (one per approved plan).",
    registry=REGISTRY,
)

WATCH_LAST_EVENT_AGE = Gauge(
    "tourniquet_watch_last_event_age_seconds",
    "Seconds since the operator last received a watch event of the resource (or since it started).",
    ["resource"],
    registry=REGISTRY,
)
WATCH_CANARY_LAG = Gauge(
    "tourniquet_watch_canary_lag_seconds",
    "The canary's round trip from its write to the AgentIncidents watch delivering it; "
    "while one is outstanding, the time since it was written.",
    ["canary_namespace"],
    registry=REGISTRY,
)
WATCH_STALE = Gauge(
    "tourniquet_watch_stale",
    "1 when the canary has not come back through the AgentIncidents watch within the stale threshold.",
    ["canary_namespace"],
    registry=REGISTRY,
)



class OpenIncidents:
    """The AgentIncidents one operator has seen open, by severity and class: ``tourniquet_incidents_open``, counted
    when /metrics is read (a prometheus_client collector). A severity and class once counted stays, at 0."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], tuple[str, str]] = {}  # (namespace, name) -> (severity, class)
        self._seen: set[tuple[str, str]] = set()

    def track(self, namespace: str, name: str, body: Mapping[str, Any] | None) -> None:
        """Count an incident as open (by severity and class) or not; `body` None: it is gone."""
        spec = (body or {}).get("spec") or {}
        meta = (body or {}).get("metadata") or {}
        if body is None or spec.get("resolved") or meta.get("deletionTimestamp"):
            self._open.pop((namespace, name), None)
            return
        key = (str(spec.get("severity") or "unknown"), str(spec.get("class") or "other"))
        self._open[(namespace, name)] = key
        self._seen.add(key)

    def collect(self) -> Iterator[Metric]:
        counts = collections.Counter(list(self._open.values()))
        family = GaugeMetricFamily(
            "tourniquet_incidents_open", "Open AgentIncidents by severity and class.", labels=["severity", "class"]
        )
        for key in sorted(set(self._seen)):
            family.add_metric(list(key), float(counts[key]))
        yield family


class OperatorMetrics:
    """What one operator serves on /metrics: the process's registry, then the gauges derived from its own state."""

    def __init__(self) -> None:
        self.open_incidents = OpenIncidents()
        self.registry = CollectorRegistry()
        self.registry.register(self.open_incidents)
        self._hooks: list[Callable[[], None]] = []

    def before_scrape(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Run `hook` before every scrape (to set gauges that are ages); returns the function that removes it."""
        self._hooks.append(hook)

        def remove() -> None:
            if hook in self._hooks:
                self._hooks.remove(hook)

        return remove

    def exposition(self) -> bytes:
        for hook in list(self._hooks):
            hook()
        return generate_latest(REGISTRY) + generate_latest(self.registry)


def observe_incident_timings(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Record the containment and resolution times an incident's status gained in one write."""
    old = before.get("timings") or {}
    new = after.get("timings") or {}
    seen_levers = old.get("levers") or {}
    for key, seconds in (new.get("levers") or {}).items():
        if key not in seen_levers and isinstance(seconds, int | float):
            CONTAINMENT_LATENCY.labels(key.rsplit("/", 1)[-1]).observe(seconds)
    contained = new.get("containedSeconds")
    if old.get("containedSeconds") is None and isinstance(contained, int | float):
        CONTAINMENT_LATENCY.labels(ALL_LEVERS).observe(contained)  # the incident as a whole: every lever applied
    resolved = new.get("resolvedSeconds")
    if old.get("resolvedSeconds") is None and isinstance(resolved, int | float):
        RESOLUTION.observe(resolved)
