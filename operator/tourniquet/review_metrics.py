"""The review features' metrics, in the operator's registry (:mod:`tourniquet.observability`), on /metrics.

==============================================  =========  ===================================================
name                                            type       labels and meaning
==============================================  =========  ===================================================
``tourniquet_agent_readiness``                  gauge      ``agent_namespace, agent, item`` (killSwitch | versionPin |
                                                           compensation | traceRetention | redeployGate): 1 when
                                                           the item is ready, 0 when not
``tourniquet_agent_readiness_score``            gauge      ``agent_namespace, agent``: ready items of five
==============================================  =========  ===================================================

Imports nothing of Tourniquet but the registry, so any layer may record into it.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from prometheus_client import Gauge

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

_lock = threading.Lock()
_items: dict[tuple[str, str], set[str]] = {}


def observe_readiness(namespace: str, agent: str, readiness: dict[str, Any]) -> None:
    items = {str(i["name"]): bool(i.get("ready")) for i in readiness.get("items") or []}
    with _lock:
        for item, ready in items.items():
            READINESS.labels(namespace, agent, item).set(1 if ready else 0)
        READINESS_SCORE.labels(namespace, agent).set(sum(items.values()))
        _items[(namespace, agent)] = set(items)


def forget_agent(namespace: str, agent: str) -> None:
    """The agent is gone: its series go too."""
    with _lock:
        for item in _items.pop((namespace, agent), set()):
            READINESS.remove(namespace, agent, item)
        with contextlib.suppress(KeyError):
            READINESS_SCORE.remove(namespace, agent)
