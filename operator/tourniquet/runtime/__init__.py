"""The Tourniquet agent runtime: what an AI agent links in so incident containment can reach it.

It (a) honours the control flag (shadow mode, revoked tools) before every tool call, following the
agent's control ConfigMap through the Kubernetes API within seconds; (b) exposes the standard
``tourniquet_agent_*`` metrics that the built-in detection rules read; (c) records each side-effecting
action with an idempotency key in a ledger, for blast radius and exactly-once compensation; and
(d) stops taking work on SIGTERM when the agent is drained. It does not need kopf.

Usage::

    from tourniquet.runtime import Runtime, Skipped

    runtime = Runtime.from_env()        # TOURNIQUET_AGENT, TOURNIQUET_NAMESPACE, ...

    @runtime.tool("issue_refund", subjects=lambda a: [f"order:{a['order_id']}"])
    def issue_refund(order_id: str, amount_cents: int) -> str:
        return payments.refund(order_id, amount_cents)

    while runtime.should_take_work():   # False after SIGTERM: finish the task, take no new one
        ticket = queue.pull()
        with runtime.task("refund_request", task_id=ticket.id):
            result = issue_refund(ticket.order_id, ticket.amount_cents)
            if isinstance(result, Skipped):         # shadow mode, or already done for this ticket
                reply_to_model(result.message)
        runtime.metrics.record_usage(prompt_tokens=812, completion_tokens=95, cost_dollars=0.004)

A revoked tool raises :class:`ToolRevoked`. See each module for the details: ``control`` (the flag),
``guard`` (the rules per call), ``ledger`` (the action ledger; ``postgres`` for the shared one),
``trace`` (decision traces), ``compensate`` (undoing an incident's actions), ``metrics`` (the metric
names), ``worker`` (SIGTERM and the environment variables).
"""

from tourniquet.runtime.compensate import CompensationRequest, CompensationWorker, Irreversible, compensator
from tourniquet.runtime.control import (
    ControlFollower,
    ControlSource,
    ControlState,
    StaticControl,
    parse_control,
)
from tourniquet.runtime.guard import (
    AlreadyDone,
    Denied,
    Guard,
    Shadowed,
    Skipped,
    ToolRevoked,
    current_idempotency_key,
)
from tourniquet.runtime.ledger import (
    Action,
    CompensationRecord,
    IdempotencyConflict,
    Ledger,
    LedgerError,
    LedgerRadius,
    LedgerUnavailable,
    SqliteLedger,
    ToolRadius,
    Trace,
    UnknownAction,
    args_digest,
    derive_idempotency_key,
    open_ledger,
)
from tourniquet.runtime.metrics import AgentMetrics, serve_metrics
from tourniquet.runtime.trace import TaskTrace
from tourniquet.runtime.worker import (
    BundleError,
    ConfigurationError,
    Runtime,
    StopToken,
    install_sigterm_handler,
    iter_work,
    load_bundle_tools,
)

__all__ = [
    "Action",
    "AgentMetrics",
    "AlreadyDone",
    "BundleError",
    "CompensationRecord",
    "CompensationRequest",
    "CompensationWorker",
    "ConfigurationError",
    "ControlFollower",
    "ControlSource",
    "ControlState",
    "Denied",
    "Guard",
    "IdempotencyConflict",
    "Irreversible",
    "Ledger",
    "LedgerError",
    "LedgerRadius",
    "LedgerUnavailable",
    "Runtime",
    "Shadowed",
    "Skipped",
    "SqliteLedger",
    "StaticControl",
    "StopToken",
    "TaskTrace",
    "ToolRadius",
    "ToolRevoked",
    "Trace",
    "UnknownAction",
    "args_digest",
    "compensator",
    "current_idempotency_key",
    "derive_idempotency_key",
    "install_sigterm_handler",
    "iter_work",
    "load_bundle_tools",
    "open_ledger",
    "parse_control",
    "serve_metrics",
]
