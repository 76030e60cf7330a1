"""The review features' metrics, in the operator's registry (:mod:`tourniquet.observability`), on /metrics.

==============================================  =========  ===================================================
name                                            type       labels and meaning
==============================================  =========  ===================================================
``tourniquet_agent_readiness``                  gauge      ``agent_namespace, agent, item`` (killSwitch | versionPin |
                                                           compensation | traceRetention | redeployGate): 1 when
                                                           the item is ready, 0 when not
``tourniquet_agent_readiness_score``            gauge      ``agent_namespace, agent``: ready items of five
``tourniquet_drill_runs_total``                 counter    ``agent_namespace, agent, result`` (Passed | Failed |
                                                           Skipped): drill runs finished
``tourniquet_drill_contained_seconds``          gauge      ``agent_namespace, agent``: the last drill's time from
                                                           its incident's creation to Contained
``tourniquet_drill_acknowledged_seconds``       gauge      ``agent_namespace, agent``: the last drill's time to
                                                           the runtime's acknowledgement (its slowest pod)
``tourniquet_drill_last_success_timestamp_seconds`` gauge  ``agent_namespace, agent``: when a drill last passed
==============================================  =========  ===================================================

Imports nothing of Tourniquet but the registry, so any layer may record into it.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from prometheus_client import Counter, Gauge

from tourniquet.observability import REGISTRY

READINESS = Gauge(
    "tourniquet_agent_readiness",
    "1 when the readiness item is ready for the agent, else 0.",
    ["agent_namespace", "agent", "item"],
    registry=REGISTRY,
)
READINESS_SCORE = Gauge(
    "tourniquet_agent_readiness_score",
    "How many of the five readiness items are ready for the agent.",
    ["agent_namespace", "agent"],
    registry=REGISTRY,
)

DRILL_RUNS = Counter(
    "tourniquet_drill_runs",
    "Drill runs finished, by result (Passed, Failed, Skipped).",
    ["agent_namespace", "agent", "result"],
    registry=REGISTRY,
)
DRILL_CONTAINED = Gauge(
    "tourniquet_drill_contained_seconds",
    "The last drill's time from its incident's creation to every lever observed applied.",
    ["agent_namespace", "agent"],
    registry=REGISTRY,
)
DRILL_ACKNOWLEDGED = Gauge(
    "tourniquet_drill_acknowledged_seconds",
    "The last drill's time from its incident's creation to the runtime's acknowledgement (the slowest pod).",
    ["agent_namespace", "agent"],
    registry=REGISTRY,
)
DRILL_LAST_SUCCESS = Gauge(
    "tourniquet_drill_last_success_timestamp_seconds",
    "When a drill on the agent last passed (Unix time).",
    ["agent_namespace", "agent"],
    registry=REGISTRY,
)


def observe_readiness(namespace: str, agent: str, readiness: dict[str, Any]) -> None:
    items = {str(i["name"]): bool(i.get("ready")) for i in readiness.get("items") or []}
    for item, ready in items.items():
        READINESS.labels(namespace, agent, item).set(1 if ready else 0)
    READINESS_SCORE.labels(namespace, agent).set(sum(items.values()))


def forget_agent(namespace: str, agent: str) -> None:
    """The agent is gone: its series go too (its items: those the gauge has for it)."""
    items = {
        sample.labels["item"]
        for family in READINESS.collect()
        for sample in family.samples
        if (sample.labels["agent_namespace"], sample.labels["agent"]) == (namespace, agent)
    }
    for item in items:
        with contextlib.suppress(KeyError):
            READINESS.remove(namespace, agent, item)
    with contextlib.suppress(KeyError):
        READINESS_SCORE.remove(namespace, agent)


def observe_drill(namespace: str, agent: str, run: dict[str, Any]) -> None:
    """A drill run finished: count it, and keep its times (a passed one's as the last success)."""
    result = str(run.get("result") or "Failed")
    DRILL_RUNS.labels(namespace, agent, result).inc()
    if run.get("containedSeconds") is not None:
        DRILL_CONTAINED.labels(namespace, agent).set(float(run["containedSeconds"]))
    if run.get("acknowledgedSeconds") is not None:
        DRILL_ACKNOWLEDGED.labels(namespace, agent).set(float(run["acknowledgedSeconds"]))
    if result == "Passed":
        DRILL_LAST_SUCCESS.labels(namespace, agent).set(time.time())
