"""The ledger's records and its interface: actions, traces, compensations, blast radii, the errors, and the
canonical JSON and digests that name an action (see :mod:`tourniquet.runtime.ledger`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

OUTCOMES = ("ok", "error", "shadowed")


SUPERSEDABLE_OUTCOMES = ("error", "shadowed")


COMPENSATION_OUTCOMES = ("done", "failed", "irreversible", "skipped")


CLAIMED = "claimed"


MAX_KEY_LENGTH = 255


MAX_UNIT_LENGTH = 32


# Statements take at most this many keys at once (5 parameters each: SQLite 3.32+ allows 32,766).
BATCH = 500


class LedgerError(Exception):
    """A ledger operation was refused; the message says why and what to do."""


class LedgerUnavailable(LedgerError):
    """The ledger's database cannot be reached (or did not answer in time); retrying later may work."""


class IdempotencyConflict(LedgerError):
    """An idempotency key was reused for a different action (different tool, agent or arguments)."""

    def __init__(self, key: str, stored: Action, attempted: Action) -> None:
        super().__init__(
            f"idempotency key {key!r} already names {stored.agent}/{stored.tool} with arguments "
            f"{stored.args_digest[:12]}…, not {attempted.agent}/{attempted.tool} with {attempted.args_digest[:12]}…; "
            "one key names one action: use a new key for a different action"
        )
        self.key = key
        self.stored = stored
        self.attempted = attempted


class UnknownAction(LedgerError):
    """No action with this idempotency key is in the ledger."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    raise TypeError(
        f"tool arguments must be JSON-serialisable (dicts, lists, strings, numbers, booleans, None, plus "
        f"datetime, Decimal, UUID, Enum and sets); got {type(value).__name__}"
    )


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal arguments give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def args_digest(tool: str, args: Mapping[str, Any]) -> str:
    """The sha256 of a tool name and its canonical arguments: what makes two calls "the same call"."""
    return hashlib.sha256(f"{tool}\n{canonical_json(dict(args))}".encode()).hexdigest()


def derive_idempotency_key(agent: str, tool: str, args: Mapping[str, Any], task_id: str) -> str:
    """The default key of an action: the same agent, tool, arguments and task give the same key."""
    material = f"{agent}\n{tool}\n{task_id}\n{canonical_json(dict(args))}"
    return "sha256:" + hashlib.sha256(material.encode()).hexdigest()


def _require_utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), e.g. datetime.now(UTC); got naive {value.isoformat()}")
    return value.astimezone(UTC)


@dataclass(frozen=True)
class Action:
    """One side-effecting tool call (or one attempt of it) as the ledger stores it."""

    idempotency_key: str
    agent: str
    tool: str
    args_digest: str
    args_json: str
    subjects: tuple[str, ...] = ()
    time: datetime = field(default_factory=utcnow)
    outcome: str = "ok"
    result_summary: str | None = None
    attempts: int = 1
    task_id: str | None = None
    bundle_revision: int | None = None
    bundle_hash: str | None = None
    amount: int | None = None
    amount_unit: str | None = None

    def __post_init__(self) -> None:
        if not self.idempotency_key or len(self.idempotency_key) > MAX_KEY_LENGTH:
            raise ValueError(
                f"an idempotency key has 1 to {MAX_KEY_LENGTH} characters; got {len(self.idempotency_key)}"
            )
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown action outcome {self.outcome!r}; expected one of {', '.join(OUTCOMES)}")
        if self.amount is not None and (isinstance(self.amount, bool) or not isinstance(self.amount, int)):
            raise ValueError(
                f"an action's amount is an integer in minor units (2500 for 25.00 USD), not {self.amount!r}"
            )
        if self.amount_unit is not None and len(self.amount_unit) > MAX_UNIT_LENGTH:
            raise ValueError(f"an amount's unit has at most {MAX_UNIT_LENGTH} characters: {self.amount_unit!r}")
        object.__setattr__(self, "time", _require_utc(self.time, "Action.time"))
        object.__setattr__(self, "subjects", tuple(dict.fromkeys(self.subjects)))

    @property
    def args(self) -> dict[str, Any]:
        """The stored arguments (as redacted by the guard, if it was given a redact hook)."""
        loaded: dict[str, Any] = json.loads(self.args_json)
        return loaded

    @property
    def primary_subject(self) -> str | None:
        """The first subject: what ``duplicatesOnly`` compares (the order a refund is for)."""
        return self.subjects[0] if self.subjects else None


@dataclass(frozen=True)
class Trace:
    """The decision trace of one action: what led the agent to it.

    Each part is JSON text as :mod:`tourniquet.runtime.trace` writes it: ``{"value": ..., "bytes": N,
    "truncated": false}`` (a redacted copy, cut to a size limit) or ``{"ref": "s3://..."}`` (a reference).
    """

    idempotency_key: str
    recorded_at: datetime = field(default_factory=utcnow)
    task_name: str | None = None
    model_input: str | None = None
    retrieved_context: str | None = None
    model_output: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "recorded_at", _require_utc(self.recorded_at, "Trace.recorded_at"))

    def parts(self) -> dict[str, Any]:
        """The parts that were recorded, decoded: ``{"modelInput": {...}, ...}``."""
        named = {
            "modelInput": self.model_input,
            "retrievedContext": self.retrieved_context,
            "modelOutput": self.model_output,
        }
        return {name: json.loads(text) for name, text in named.items() if text is not None}


@dataclass(frozen=True)
class CompensationRecord:
    """Where the compensation of one action stands within one incident."""

    idempotency_key: str
    incident: str
    state: str  # claimed | done | failed | irreversible | skipped
    attempts: int
    claimed_by: str | None
    claimed_at: datetime
    completed_at: datetime | None = None
    detail: str | None = None


@dataclass(frozen=True)
class ToolRadius:
    """One tool's share of a blast radius: successful actions in the window."""

    tool: str
    actions: int
    subjects: int
    amounts: dict[str, int] = field(default_factory=dict)  # unit ("" when undeclared) -> sum
    first: datetime | None = None
    last: datetime | None = None


@dataclass(frozen=True)
class LedgerRadius:
    """What the ledger says about a window: per tool, plus the distinct subjects over every tool."""

    tools: tuple[ToolRadius, ...]
    subjects: int

    @property
    def actions(self) -> int:
        return sum(t.actions for t in self.tools)


@runtime_checkable
class Ledger(Protocol):
    """What an agent's guard needs of a ledger: it records its actions (with their traces) and looks one up by its
    key. :class:`~tourniquet.runtime.ledger.SqlLedger` is the ledger, with what the operator and the compensation
    worker read besides (windows, subjects, blast radii, compensation claims and leases); see the module docstring
    of :mod:`tourniquet.runtime.ledger` for the rules."""

    def record(self, action: Action, trace: Trace | None = None) -> Action:
        """Store an action (and its decision trace); idempotent on its key. Returns the action as stored."""
        ...

    def get(self, idempotency_key: str) -> Action | None: ...

    def trace(self, idempotency_key: str) -> Trace | None: ...

    def close(self) -> None: ...
