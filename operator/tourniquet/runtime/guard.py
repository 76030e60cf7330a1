"""The guard every tool call goes through: honour the control flag, record the action, count it.

Before each call, in this order:

1. a **revoked** tool (read or write) raises :class:`ToolRevoked`; nothing runs;
2. in **shadow mode** a ``write`` tool does not run: the call is recorded in the ledger as ``shadowed``
   and a :class:`Shadowed` result comes back (a ``read`` tool still runs, so the agent keeps reasoning);
3. a ``write`` call whose idempotency key already succeeded does not run again: an :class:`AlreadyDone`
   result comes back (a redelivered task cannot refund twice);
4. otherwise the tool runs; a ``write`` call is recorded with outcome ``ok`` or ``error`` (errors are
   re-raised, and a later retry of the same action may run).

Each recorded action carries what the undo needs: its ``subjects`` (the first is the primary one, which
``duplicatesOnly`` compares), a declared ``amount`` in minor units (``amount=lambda a: a["amount_cents"],
amount_unit="USD cents"``), the task id, the bundle revision and hash that ran it, and, inside a
:meth:`Guard.task`, its decision trace (see :mod:`tourniquet.runtime.trace`).

Every call is counted in ``tourniquet_agent_tool_calls_total``; a call identical (same tool, same
arguments) to one made within ``repeat_window`` seconds also counts in
``tourniquet_agent_repeated_tool_calls_total``, the signal of an agent stuck in a loop.

The idempotency key of a call is, in order: the ``idempotency_key`` given; else the sha256 of agent,
tool, canonical arguments and the task id (``task_id=`` or the enclosing :meth:`Guard.task`); else,
with no task id, a fresh key per call. Give a task id (a ticket id, a queue message id) so that a
retried or redelivered task is recognised as the same action. Tools missing from ``tools`` are treated
as ``write``, the safe assumption. Skipped results (:class:`Shadowed`, :class:`AlreadyDone`,
:class:`Denied`) carry a ``message`` meant to be handed back to the model as the tool's answer.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from tourniquet.runtime.control import ControlSource, ControlState, StaticControl
from tourniquet.runtime.ledger import (
    Action,
    IdempotencyConflict,
    Ledger,
    Trace,
    args_digest,
    canonical_json,
    derive_idempotency_key,
)
from tourniquet.runtime.metrics import AgentMetrics
from tourniquet.runtime.trace import DEFAULT_PART_LIMIT, TaskTrace

log = logging.getLogger(__name__)

WRITE = "write"
READ = "read"
SIDE_EFFECTS = (WRITE, READ)
SUMMARY_LIMIT = 500

P = ParamSpec("P")
R = TypeVar("R")

# A declared amount: an integer in minor units, or (amount, unit); a function of the arguments gives it per call.
AmountValue = int | tuple[int, str] | None
AmountSpec = AmountValue | Callable[[dict[str, Any]], AmountValue]


class ToolRevoked(PermissionError):
    """The tool is revoked by incident containment: the call was not made."""

    def __init__(self, tool: str, state: ControlState) -> None:
        super().__init__(
            f"tool {tool} is revoked by incident containment; the call was not made, and calls to it are refused "
            f"until the incident is released (control flag seen via {state.source})"
        )
        self.tool = tool
        self.state = state


@dataclass(frozen=True)
class Skipped:
    """A tool call that deliberately did not run; ``message`` explains it to the model or the caller."""

    tool: str
    message: str
    action: Action | None = None


@dataclass(frozen=True)
class Shadowed(Skipped):
    """A write tool held back in shadow mode; the intended call is in the ledger as ``shadowed``."""


@dataclass(frozen=True)
class AlreadyDone(Skipped):
    """The same action (same idempotency key) already succeeded; it was not repeated."""


@dataclass(frozen=True)
class Denied(Skipped):
    """The agent's own policy refused the call (see :meth:`Guard.deny`)."""

    reason: str = ""


@dataclass(frozen=True)
class _TaskContext:
    name: str
    task_id: str | None
    trace: TaskTrace


_current_task: ContextVar[_TaskContext | None] = ContextVar("tourniquet_task", default=None)
_current_key: ContextVar[str | None] = ContextVar("tourniquet_action_key", default=None)


def current_idempotency_key() -> str | None:
    """Inside a guarded tool call, the idempotency key of the action being made (None elsewhere): pass it
    to the remote side (a payment API's idempotency key) so that the action, and its compensation, can
    be found and retried safely."""
    return _current_key.get()


def _summary(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 1] + "…"


def _amount(spec: AmountSpec, args: dict[str, Any], unit: str | None) -> tuple[int | None, str | None]:
    value = spec(args) if callable(spec) else spec
    if value is None:
        return None, None
    if isinstance(value, tuple):
        amount, declared_unit = value
        return amount, declared_unit
    return value, unit


@dataclass
class _Plan:
    """A call cleared to run, and how to record it afterwards (``action`` is None: do not record)."""

    tool: str
    action: Action | None
    trace: TaskTrace | None = None


class Guard:
    """Checks the control flag before each tool call and records each side-effecting action.

    ``control`` is a :class:`~tourniquet.runtime.control.ControlFollower` (or any object with
    ``state()``, or a fixed :class:`ControlState`); ``tools`` maps each tool name to its side effects,
    ``"write"`` or ``"read"`` (the bundle's ``sideEffects``). ``redact(tool, args)`` returns the
    arguments as they may be stored (the digest is always taken over the real ones); ``summarize(result)``
    returns the text stored with a successful action (default: its ``repr``, cut to 500 characters).
    """

    def __init__(
        self,
        control: ControlSource | ControlState,
        ledger: Ledger | None,
        metrics: AgentMetrics | None = None,
        *,
        agent: str,
        tools: Mapping[str, str] | None = None,
        redact: Callable[[str, dict[str, Any]], Mapping[str, Any]] | None = None,
        summarize: Callable[[Any], str | None] = _summary,
        record_reads: bool = False,
        repeat_window: float = 600.0,
        bundle_revision: int | None = None,
        bundle_hash: str | None = None,
        trace_limit: int = DEFAULT_PART_LIMIT,
    ) -> None:
        self.agent = agent
        self.bundle_revision = bundle_revision
        self.bundle_hash = bundle_hash
        self.trace_limit = trace_limit
        self._control: ControlSource = StaticControl(control) if isinstance(control, ControlState) else control
        self.ledger = ledger
        self.metrics = metrics if metrics is not None else AgentMetrics(agent)
        self.tools: dict[str, str] = {}
        for tool, effects in (tools or {}).items():
            if effects not in SIDE_EFFECTS:
                raise ValueError(f"tool {tool}: sideEffects must be 'write' or 'read', not {effects!r}")
            self.tools[tool] = effects
        self.metrics.declare_tools(self.tools)
        self._redact = redact
        self._summarize = summarize
        self.record_reads = record_reads
        self.repeat_window = repeat_window
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._recent_limit = 10_000
        self._lock = threading.Lock()
        self._warned_unknown: set[str] = set()
        self._last_state: ControlState | None = None

    # -- public ------------------------------------------------------------------------------------

    def state(self) -> ControlState:
        """The control state the next call will be checked against."""
        return self._control.state()

    def side_effects(self, tool: str) -> str:
        """``write`` or ``read``; a tool the bundle does not declare is treated as ``write``."""
        effects = self.tools.get(tool)
        if effects is None:
            if tool not in self._warned_unknown:
                self._warned_unknown.add(tool)
                log.warning("Tool %s is not declared in the bundle; treating it as a write tool", tool)
            return WRITE
        return effects

    def call(
        self,
        tool: str,
        args: Mapping[str, Any],
        fn: Callable[..., R],
        *,
        subjects: Iterable[str] = (),
        idempotency_key: str | None = None,
        task_id: str | None = None,
        amount: AmountValue = None,
        amount_unit: str | None = None,
    ) -> R | Skipped:
        """Run ``fn(**args)`` as the tool ``tool`` if the control flag allows it (see the module docstring)."""
        declared = _amount(amount, dict(args), amount_unit)
        return self._run(tool, dict(args), lambda: fn(**args), subjects, idempotency_key, task_id, declared)

    async def acall(
        self,
        tool: str,
        args: Mapping[str, Any],
        fn: Callable[..., Awaitable[R]],
        *,
        subjects: Iterable[str] = (),
        idempotency_key: str | None = None,
        task_id: str | None = None,
        amount: AmountValue = None,
        amount_unit: str | None = None,
    ) -> R | Skipped:
        """:meth:`call` for a coroutine function: ``await fn(**args)``."""
        declared = _amount(amount, dict(args), amount_unit)
        return await self._arun(tool, dict(args), lambda: fn(**args), subjects, idempotency_key, task_id, declared)

    def tool(
        self,
        name: str | None = None,
        *,
        subjects: Callable[[dict[str, Any]], Iterable[str]] | None = None,
        amount: AmountSpec = None,
        amount_unit: str | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R | Skipped]]:
        """Decorate a tool function (sync or async) so every call goes through the guard.

        ``subjects(args)`` names what the call touches (``["order:123", "customer:42"]``; the first is the
        primary subject), for the blast radius; ``amount(args)`` declares the money (or other quantity) it
        moves, an integer in minor units, in ``amount_unit`` (or returns ``(amount, unit)``).
        """

        def decorate(fn: Callable[P, R]) -> Callable[P, R | Skipped]:
            tool_name = name or fn.__name__
            signature = inspect.signature(fn)

            def bind(*a: Any, **kw: Any) -> tuple[dict[str, Any], Callable[[], Any]]:
                bound = signature.bind(*a, **kw)
                bound.apply_defaults()
                return dict(bound.arguments), lambda: fn(*bound.args, **bound.kwargs)

            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def async_wrapper(*a: P.args, **kw: P.kwargs) -> Any:
                    args, invoke = bind(*a, **kw)
                    declared = _amount(amount, args, amount_unit)
                    return await self._arun(
                        tool_name, args, invoke, subjects(args) if subjects else (), None, None, declared
                    )

                return async_wrapper  # type: ignore[return-value]

            @functools.wraps(fn)
            def wrapper(*a: P.args, **kw: P.kwargs) -> R | Skipped:
                args, invoke = bind(*a, **kw)
                declared = _amount(amount, args, amount_unit)
                return self._run(tool_name, args, invoke, subjects(args) if subjects else (), None, None, declared)

            return wrapper

        return decorate

    def deny(self, tool: str, reason: str) -> Denied:
        """Count a call the agent's own policy refused; returns a :class:`Denied` to hand to the model."""
        self.metrics.policy_denied(tool)
        self.metrics.tool_call(tool, "denied")
        log.info("Denied %s by policy: %s", tool, reason)
        return Denied(tool=tool, message=f"{tool} was refused by policy: {reason}", reason=reason)

    @contextmanager
    def task(self, name: str, task_id: str | None = None) -> Iterator[TaskTrace]:
        """A unit of work: its id keys the calls inside, and an exception counts as a task failure.

        ``name`` is the kind of task (``"refund_request"``: a metric label); ``task_id`` names this one
        (the ticket or message id) and makes a retried task's calls recognisable as the same actions.
        It yields the task's :class:`~tourniquet.runtime.trace.TaskTrace`, where the agent puts the model
        input, retrieved context and model output that its actions' decision traces carry.
        """
        trace = TaskTrace(name, task_id, limit=self.trace_limit)
        token = _current_task.set(_TaskContext(name, task_id, trace))
        try:
            yield trace
        except Exception:
            self.metrics.task_failed(name)
            raise
        finally:
            _current_task.reset(token)

    # -- the steps ---------------------------------------------------------------------------------

    def _admit(
        self,
        tool: str,
        args: dict[str, Any],
        subjects: Iterable[str],
        idempotency_key: str | None,
        task_id: str | None,
        declared: tuple[int | None, str | None] = (None, None),
    ) -> _Plan | Skipped:
        """Decide before the call: raise ToolRevoked, return a Skipped result, or a plan to run it."""
        state = self._control.state()
        if state is not self._last_state:
            self._last_state = state
            self.metrics.observe_control(state.shadow, state.revoked_tools)
        digest = args_digest(tool, args)
        if self._repeated(digest):
            self.metrics.repeated_call(tool)
        if state.is_revoked(tool):
            self.metrics.tool_call(tool, "revoked")
            log.warning("Refused %s: revoked by incident containment", tool)
            raise ToolRevoked(tool, state)
        write = self.side_effects(tool) == WRITE
        if not write and not self.record_reads:
            return _Plan(tool, None)
        current = _current_task.get()
        if task_id is None and current is not None:
            task_id = current.task_id
        now = datetime.now(UTC)
        action = Action(
            idempotency_key=idempotency_key or self._derive_key(tool, args, task_id),
            agent=self.agent,
            tool=tool,
            args_digest=digest,
            args_json=canonical_json(dict(self._redact(tool, args)) if self._redact else args),
            subjects=tuple(subjects),
            time=now,
            task_id=task_id,
            bundle_revision=self.bundle_revision,
            bundle_hash=self.bundle_hash,
            amount=declared[0],
            amount_unit=declared[1],
        )
        task_trace = current.trace if current is not None else None
        if write and state.shadow:
            trace = task_trace.for_action(action.idempotency_key, now) if task_trace is not None else None
            stored = self.ledger.record(replace(action, outcome="shadowed"), trace) if self.ledger else action
            self.metrics.tool_call(tool, "shadowed")
            log.info("Shadowed %s: recorded, not executed (shadow mode)", tool)
            return Shadowed(
                tool=tool,
                message=(
                    f"{tool} was not executed: agent {self.agent} is in shadow mode (incident containment). "
                    "The intended call was recorded for review; do not retry it."
                ),
                action=stored,
            )
        previous = self.ledger.get(action.idempotency_key) if write and self.ledger is not None else None
        if previous is not None:
            if (previous.agent, previous.tool, previous.args_digest) != (action.agent, action.tool, action.args_digest):
                raise IdempotencyConflict(action.idempotency_key, previous, action)
            if previous.outcome == "ok":
                log.info("Skipped %s: the same action already succeeded at %s", tool, previous.time.isoformat())
                return AlreadyDone(
                    tool=tool,
                    message=(
                        f"{tool} already ran with these arguments for this task at {previous.time.isoformat()}; "
                        "it was not repeated."
                    ),
                    action=previous,
                )
        return _Plan(tool, action, task_trace)

    def _finish(self, plan: _Plan, result: Any = None, error: BaseException | None = None) -> None:
        """Count the call and record its outcome; a ledger failure is logged, never raised over the result."""
        outcome = "error" if error is not None else "ok"
        self.metrics.tool_call(plan.tool, outcome)
        if plan.action is None or self.ledger is None:
            return
        summary = _summary(f"{type(error).__name__}: {error}") if error is not None else self._summarize(result)
        trace: Trace | None = None
        if plan.trace is not None:
            trace = plan.trace.for_action(plan.action.idempotency_key)
        try:
            self.ledger.record(replace(plan.action, outcome=outcome, result_summary=summary), trace)
        except Exception:  # the action happened; raising now would invite a duplicate retry
            log.exception("Could not record %s (%s) in the ledger", plan.tool, plan.action.idempotency_key)

    def _run(
        self,
        tool: str,
        args: dict[str, Any],
        invoke: Callable[[], R],
        subjects: Iterable[str],
        idempotency_key: str | None,
        task_id: str | None,
        declared: tuple[int | None, str | None] = (None, None),
    ) -> R | Skipped:
        plan = self._admit(tool, args, subjects, idempotency_key, task_id, declared)
        if isinstance(plan, Skipped):
            return plan
        token = _current_key.set(plan.action.idempotency_key if plan.action is not None else None)
        try:
            result = invoke()
        except Exception as exc:
            self._finish(plan, error=exc)
            raise
        finally:
            _current_key.reset(token)
        self._finish(plan, result)
        return result

    async def _arun(
        self,
        tool: str,
        args: dict[str, Any],
        invoke: Callable[[], Awaitable[R]],
        subjects: Iterable[str],
        idempotency_key: str | None,
        task_id: str | None,
        declared: tuple[int | None, str | None] = (None, None),
    ) -> R | Skipped:
        plan = self._admit(tool, args, subjects, idempotency_key, task_id, declared)
        if isinstance(plan, Skipped):
            return plan
        token = _current_key.set(plan.action.idempotency_key if plan.action is not None else None)
        try:
            result = await invoke()
        except Exception as exc:
            self._finish(plan, error=exc)
            raise
        finally:
            _current_key.reset(token)
        self._finish(plan, result)
        return result

    # -- helpers -----------------------------------------------------------------------------------

    def _derive_key(self, tool: str, args: dict[str, Any], task_id: str | None) -> str:
        if task_id is None:
            current = _current_task.get()
            task_id = current.task_id if current is not None else None
        if task_id is None:
            task_id = f"untracked-{uuid.uuid4()}"  # no task: every call is its own action
        return derive_idempotency_key(self.agent, tool, args, task_id)

    def _repeated(self, digest: str) -> bool:
        """Whether the same call was made within ``repeat_window`` seconds (and remember this one)."""
        now = time.monotonic()
        with self._lock:
            while self._recent:
                oldest, seen = next(iter(self._recent.items()))
                if now - seen <= self.repeat_window and len(self._recent) < self._recent_limit:
                    break
                del self._recent[oldest]
            repeated = digest in self._recent
            self._recent[digest] = now
            self._recent.move_to_end(digest)
        return repeated
