"""The standard agent metrics that Tourniquet's built-in detection rules read.

Every series carries an ``agent`` label (the AgentDeployment's name). The built-in rules are written
against exactly these names, so keep them stable:

==================================================  =======  ==============================================
name                                                type     labels and meaning
==================================================  =======  ==============================================
``tourniquet_agent_tool_calls_total``               counter  ``agent, tool, outcome``; outcome is one of
                                                             ``ok`` (ran), ``error`` (ran and raised),
                                                             ``shadowed`` (a write held back in shadow
                                                             mode), ``revoked`` (refused: tool revoked),
                                                             ``denied`` (refused by the agent's own policy)
``tourniquet_agent_task_failures_total``            counter  ``agent, task``: a unit of work that failed
``tourniquet_agent_tokens_total``                   counter  ``agent, kind``; kind is ``prompt`` or
                                                             ``completion``
``tourniquet_agent_cost_dollars_total``             counter  ``agent``: model spend in US dollars
``tourniquet_agent_policy_denials_total``           counter  ``agent, tool``: calls the agent's own policy
                                                             layer refused
``tourniquet_agent_context_tokens``                 gauge    ``agent``: size of the current context window
``tourniquet_agent_repeated_tool_calls_total``      counter  ``agent, tool``: a call identical (same tool,
                                                             same arguments) to a recent one: loops
``tourniquet_agent_sessions_total``                 counter  ``agent``: sessions (conversations) started
``tourniquet_agent_shadow_mode``                    gauge    ``agent``: 1 while the agent honours shadow
                                                             mode (the flag as the agent *sees* it)
``tourniquet_agent_tool_revoked``                   gauge    ``agent, tool``: 1 while the agent sees the
                                                             tool as revoked
==================================================  =======  ==============================================

The last two report the control flag back, so the operator can say "flag seen by the agent", not only
"flag set". Metrics live in their own :class:`~prometheus_client.CollectorRegistry` unless one is given,
so two runtimes (or two tests) in one process never collide; several agents may share one registry.
Label values that are known up front (the bundle's tools, every outcome) are created at zero, because a
counter that first appears at 1 is invisible to ``rate()`` and ``increase()``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, start_http_server

OUTCOMES = ("ok", "error", "shadowed", "revoked", "denied")
TOKEN_KINDS = ("prompt", "completion")


@dataclass(frozen=True)
class _Families:
    """The metric families of one registry (shared by every agent that uses it)."""

    tool_calls: Counter
    task_failures: Counter
    tokens: Counter
    cost: Counter
    policy_denials: Counter
    context_tokens: Gauge
    repeated_calls: Counter
    sessions: Counter
    shadow_mode: Gauge
    tool_revoked: Gauge


_families_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()
_families_lock = threading.Lock()


def _families(registry: CollectorRegistry) -> _Families:
    with _families_lock:
        families = _families_by_registry.get(registry)
        if families is None:
            families = _Families(
                tool_calls=Counter(
                    "tourniquet_agent_tool_calls",
                    "Tool calls the agent attempted, by outcome (ok|error|shadowed|revoked|denied).",
                    ["agent", "tool", "outcome"],
                    registry=registry,
                ),
                task_failures=Counter(
                    "tourniquet_agent_task_failures", "Units of work that failed.", ["agent", "task"], registry=registry
                ),
                tokens=Counter(
                    "tourniquet_agent_tokens",
                    "Model tokens used (prompt|completion).",
                    ["agent", "kind"],
                    registry=registry,
                ),
                cost=Counter(
                    "tourniquet_agent_cost_dollars", "Model spend in US dollars.", ["agent"], registry=registry
                ),
                policy_denials=Counter(
                    "tourniquet_agent_policy_denials",
                    "Tool calls refused by the agent's own policy layer.",
                    ["agent", "tool"],
                    registry=registry,
                ),
                context_tokens=Gauge(
                    "tourniquet_agent_context_tokens",
                    "Tokens in the current context window.",
                    ["agent"],
                    registry=registry,
                ),
                repeated_calls=Counter(
                    "tourniquet_agent_repeated_tool_calls",
                    "Tool calls identical (same tool, same arguments) to a recent call.",
                    ["agent", "tool"],
                    registry=registry,
                ),
                sessions=Counter("tourniquet_agent_sessions", "Sessions started.", ["agent"], registry=registry),
                shadow_mode=Gauge(
                    "tourniquet_agent_shadow_mode",
                    "1 while the agent honours shadow mode (the control flag as the agent sees it).",
                    ["agent"],
                    registry=registry,
                ),
                tool_revoked=Gauge(
                    "tourniquet_agent_tool_revoked",
                    "1 while the agent sees the tool as revoked.",
                    ["agent", "tool"],
                    registry=registry,
                ),
            )
            _families_by_registry[registry] = families
        return families


class AgentMetrics:
    """The standard metrics of one agent: call the methods, the ``agent`` label is filled in.

    >>> metrics = AgentMetrics("refund-agent")
    >>> metrics.record_usage(prompt_tokens=812, completion_tokens=95, cost_dollars=0.0041)
    """

    def __init__(self, agent: str, registry: CollectorRegistry | None = None) -> None:
        if not agent:
            raise ValueError("AgentMetrics needs the agent's name (the AgentDeployment's metadata.name)")
        self.agent = agent
        self.registry = registry if registry is not None else CollectorRegistry()
        self._m = _families(self.registry)
        self._revoked_seen: set[str] = set()
        self._lock = threading.Lock()
        for kind in TOKEN_KINDS:
            self._m.tokens.labels(agent, kind)
        self._m.cost.labels(agent)
        self._m.sessions.labels(agent)
        self._m.context_tokens.labels(agent)
        self._m.shadow_mode.labels(agent)

    def declare_tools(self, tools: Iterable[str]) -> None:
        """Create every per-tool series at zero, so the first real increment is visible to ``rate()``."""
        for tool in tools:
            for outcome in OUTCOMES:
                self._m.tool_calls.labels(self.agent, tool, outcome)
            self._m.policy_denials.labels(self.agent, tool)
            self._m.repeated_calls.labels(self.agent, tool)
            self._m.tool_revoked.labels(self.agent, tool)

    def tool_call(self, tool: str, outcome: str) -> None:
        """Count one tool call with its outcome: ok, error, shadowed, revoked or denied."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown tool-call outcome {outcome!r}; expected one of {', '.join(OUTCOMES)}")
        self._m.tool_calls.labels(self.agent, tool, outcome).inc()

    def policy_denied(self, tool: str) -> None:
        self._m.policy_denials.labels(self.agent, tool).inc()

    def repeated_call(self, tool: str) -> None:
        self._m.repeated_calls.labels(self.agent, tool).inc()

    def task_failed(self, task: str) -> None:
        """Count a failed unit of work; ``task`` is its kind (``refund_request``), never a per-item id."""
        self._m.task_failures.labels(self.agent, task).inc()

    def session_started(self) -> None:
        self._m.sessions.labels(self.agent).inc()

    def record_usage(
        self,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost_dollars: float = 0.0,
        context_tokens: int | None = None,
    ) -> None:
        """Record one model response's usage; ``context_tokens`` sets the context-size gauge when given."""
        if prompt_tokens < 0 or completion_tokens < 0 or cost_dollars < 0:
            raise ValueError("token counts and cost only grow: pass the usage of one response, not a difference")
        if prompt_tokens:
            self._m.tokens.labels(self.agent, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self._m.tokens.labels(self.agent, "completion").inc(completion_tokens)
        if cost_dollars:
            self._m.cost.labels(self.agent).inc(cost_dollars)
        if context_tokens is not None:
            self.set_context_tokens(context_tokens)

    def set_context_tokens(self, tokens: int) -> None:
        self._m.context_tokens.labels(self.agent).set(tokens)

    def observe_control(self, shadow: bool, revoked_tools: Iterable[str]) -> None:
        """Report the control flag as the agent sees it (the ``shadow_mode`` and ``tool_revoked`` gauges)."""
        revoked = set(revoked_tools)
        with self._lock:
            self._m.shadow_mode.labels(self.agent).set(1 if shadow else 0)
            for tool in self._revoked_seen | revoked:
                self._m.tool_revoked.labels(self.agent, tool).set(1 if tool in revoked else 0)
            self._revoked_seen |= revoked

    def exposition(self) -> str:
        """The registry in the Prometheus text format (what a scrape of ``/metrics`` returns)."""
        return generate_latest(self.registry).decode()


def serve_metrics(
    port: int, *, registry: CollectorRegistry | AgentMetrics, addr: str = "0.0.0.0"
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread; returns the server (``.shutdown()`` it).

    ``port=0`` picks a free port: read it back from ``server.server_port``.
    """
    if isinstance(registry, AgentMetrics):
        registry = registry.registry
    return start_http_server(port, addr=addr, registry=registry)
