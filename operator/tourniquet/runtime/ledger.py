"""The action ledger: every side-effecting tool call, keyed for idempotency, plus compensation bookkeeping.

One row is one *action*: a tool called with given arguments for a given piece of work, named by its
idempotency key. Besides the arguments it carries what the undo needs: the *subjects* it touched
(``order:123``, ``customer:47``; the first is its *primary* subject), a declared *amount* (an integer in
minor units, with its unit: ``2500 "USD cents"``), the task it belonged to and the bundle revision that
ran it. Next to it, its *decision trace* (the model input, retrieved context and model output that led
to it, size-bounded and redacted by :mod:`tourniquet.runtime.trace`). The operator reads the ledger to
size an incident's blast radius (the actions in the incident window) and to compensate each of those
actions exactly once.

Rules that matter:

* ``record`` is idempotent on the key. The same key with the same arguments returns the stored action;
  the same key with different arguments raises :class:`IdempotencyConflict` (one key names one action).
  An ``ok`` outcome is final. An ``error`` or ``shadowed`` record is superseded by a later attempt of the
  same action (a retry after a failure, or the real call once shadow mode ends), so one action stays one
  row and ``attempts`` says how often it was tried; its trace is replaced by the later attempt's.
* ``claim_compensation`` is an atomic unique-row insert: across threads and processes exactly one caller
  gets ``True`` for an (incident, action) pair. A compensation that ended ``failed`` can be claimed again
  (by exactly one caller); a claim left behind by a crashed process can be taken over with
  ``reclaim_after``, which turns "exactly once" into "at least once" for that one crash: make the
  compensating call itself idempotent (pass the action's key to the remote side).
* The compensation worker works under an incident *lease* (``acquire_lease``: one holder per incident
  until it expires; the holder renews it). While it holds the lease no other worker compensates that
  incident, so ``claim_batch`` can take over the claims a dead holder left behind at once: those are
  the only actions whose compensating call may have happened twice, which is why the call carries the
  original action's idempotency key.
* Times are timezone-aware UTC; windows are half-open, ``start <= time < end``.
* Traces are kept for a retention period (``prune_traces``); actions and compensations are the record
  and are never pruned by the library.

Backends. :class:`SqliteLedger` is the default: one file, WAL mode, one connection per thread, write
transactions taken with ``BEGIN IMMEDIATE``. :class:`~tourniquet.runtime.postgres.PostgresLedger` is the
shared one (every replica of every agent writes to it, the operator reads it): psycopg 3 with a
connection pool. The queries live in :class:`SqlLedger` and use only what SQLite and PostgreSQL share:
plain DDL, ``INSERT ... ON CONFLICT (...) DO NOTHING`` and conditional ``UPDATE`` for every race (both
stay correct under PostgreSQL's READ COMMITTED), and no ``INSERT OR REPLACE``, ``RETURNING`` or JSON
functions. The dialect bits are isolated: :class:`SqlDialect` holds the placeholder style and the
timestamp column type and its conversion, and a subclass's ``_transaction`` says how a transaction
begins and where connections come from. Migrations and queries are shared; the schema version is kept
in the ``tourniquet_ledger_schema`` table, and opening a ledger applies any newer migrations (under a
lock, so several processes opening a new ledger at once migrate it once). :func:`open_ledger` opens
either from a path or a URL.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
import uuid
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit
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
    """What the guard writes and the operator reads; see the module docstring for the rules."""

    def record(self, action: Action, trace: Trace | None = None) -> Action:
        """Store an action (and its decision trace); idempotent on its key. Returns the action as stored."""
        ...

    def get(self, idempotency_key: str) -> Action | None: ...

    def trace(self, idempotency_key: str) -> Trace | None: ...

    def actions(
        self,
        agent: str,
        start: datetime,
        end: datetime | None = None,
        *,
        tools: Iterable[str] | None = None,
        outcomes: Iterable[str] = ("ok",),
    ) -> list[Action]:
        """The agent's actions in ``[start, end)``, oldest first: an incident's blast radius."""
        ...

    def count_by_tool(
        self,
        agent: str,
        start: datetime,
        end: datetime | None = None,
        *,
        tools: Iterable[str] | None = None,
        outcomes: Iterable[str] = ("ok",),
    ) -> dict[str, int]: ...

    def subjects(
        self,
        agent: str,
        start: datetime,
        end: datetime | None = None,
        *,
        tools: Iterable[str] | None = None,
        outcomes: Iterable[str] = ("ok",),
    ) -> list[str]:
        """The distinct subjects (customers, tickets, ...) the actions touched, sorted."""
        ...

    def blast_radius(
        self, agent: str, start: datetime, end: datetime | None = None, *, tools: Iterable[str] | None = None
    ) -> LedgerRadius: ...

    def claim_compensation(
        self, idempotency_key: str, incident: str, *, claimer: str | None = None, reclaim_after: timedelta | None = None
    ) -> bool:
        """True for exactly one caller per (incident, action); see the module docstring."""
        ...

    def complete_compensation(
        self, idempotency_key: str, incident: str, outcome: str, *, detail: str | None = None
    ) -> None: ...

    def compensation_state(self, incident: str) -> dict[str, CompensationRecord]: ...

    def close(self) -> None: ...


class Cursor(Protocol):
    """The part of a DB-API cursor the ledger uses."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


@dataclass(frozen=True)
class SqlDialect:
    """Everything that differs between SQL databases, so the queries themselves can be shared."""

    placeholder: str
    timestamp_type: str
    to_db_time: Callable[[datetime], Any]
    from_db_time: Callable[[Any], datetime]

    def sql(self, statement: str) -> str:
        """The statement with ``?`` placeholders rewritten into this dialect's style."""
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)


def _sqlite_time(value: datetime) -> str:
    # Fixed width, always UTC: text comparison is then time comparison.
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _sqlite_parse_time(value: Any) -> datetime:
    return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


SQLITE = SqlDialect(
    placeholder="?", timestamp_type="CHAR(27)", to_db_time=_sqlite_time, from_db_time=_sqlite_parse_time
)

# Each migration is a list of statements; {ts} is the dialect's timestamp column type. A released
# migration is never changed in a way that matters to an existing database (SQLite ignores VARCHAR
# lengths, so widening one there changes nothing for a ledger already created).
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE tourniquet_actions (
            idempotency_key VARCHAR(255) NOT NULL PRIMARY KEY,
            agent VARCHAR(253) NOT NULL,
            tool VARCHAR(253) NOT NULL,
            args_digest CHAR(64) NOT NULL,
            args_json TEXT NOT NULL,
            action_time {ts} NOT NULL,
            outcome VARCHAR(16) NOT NULL,
            result_summary TEXT,
            attempts INTEGER NOT NULL
        )""",
        "CREATE INDEX tourniquet_actions_by_window ON tourniquet_actions (agent, action_time)",
        """CREATE TABLE tourniquet_action_subjects (
            idempotency_key VARCHAR(255) NOT NULL REFERENCES tourniquet_actions (idempotency_key),
            position INTEGER NOT NULL,
            subject VARCHAR(1024) NOT NULL,
            PRIMARY KEY (idempotency_key, position)
        )""",
        "CREATE INDEX tourniquet_action_subjects_by_subject ON tourniquet_action_subjects (subject)",
        # incident: "namespace/name", up to 63 + 1 + 253 characters.
        """CREATE TABLE tourniquet_compensations (
            incident VARCHAR(320) NOT NULL,
            idempotency_key VARCHAR(255) NOT NULL,
            state VARCHAR(16) NOT NULL,
            attempts INTEGER NOT NULL,
            claimed_by VARCHAR(255),
            claimed_at {ts} NOT NULL,
            completed_at {ts},
            detail TEXT,
            PRIMARY KEY (incident, idempotency_key)
        )""",
    ],
    [
        # What the undo needs per action: its task, the bundle that ran it, a declared amount.
        "ALTER TABLE tourniquet_actions ADD COLUMN task_id VARCHAR(255)",
        "ALTER TABLE tourniquet_actions ADD COLUMN bundle_revision INTEGER",
        "ALTER TABLE tourniquet_actions ADD COLUMN bundle_hash VARCHAR(64)",
        "ALTER TABLE tourniquet_actions ADD COLUMN amount BIGINT",
        "ALTER TABLE tourniquet_actions ADD COLUMN amount_unit VARCHAR(32)",
        # The blast radius reads (agent, window, outcome, tool) and the amounts from the index alone where
        # the database can (PostgreSQL's index-only scans); it replaces the (agent, action_time) index.
        "CREATE INDEX tourniquet_actions_by_agent_window ON tourniquet_actions "
        "(agent, action_time, outcome, tool, amount_unit, amount)",
        "DROP INDEX tourniquet_actions_by_window",
        # Subjects carry their action's agent, time and outcome too (kept in step by record), so the blast
        # radius's distinct subjects come from this table's own window index, with no join.
        "ALTER TABLE tourniquet_action_subjects ADD COLUMN agent VARCHAR(253)",
        "ALTER TABLE tourniquet_action_subjects ADD COLUMN tool VARCHAR(253)",
        "ALTER TABLE tourniquet_action_subjects ADD COLUMN action_time {ts}",
        "ALTER TABLE tourniquet_action_subjects ADD COLUMN outcome VARCHAR(16)",
        """UPDATE tourniquet_action_subjects SET
            agent = (SELECT a.agent FROM tourniquet_actions a
                     WHERE a.idempotency_key = tourniquet_action_subjects.idempotency_key),
            tool = (SELECT a.tool FROM tourniquet_actions a
                    WHERE a.idempotency_key = tourniquet_action_subjects.idempotency_key),
            action_time = (SELECT a.action_time FROM tourniquet_actions a
                           WHERE a.idempotency_key = tourniquet_action_subjects.idempotency_key),
            outcome = (SELECT a.outcome FROM tourniquet_actions a
                       WHERE a.idempotency_key = tourniquet_action_subjects.idempotency_key)""",
        "CREATE INDEX tourniquet_action_subjects_by_window ON tourniquet_action_subjects "
        "(agent, action_time, outcome, tool, subject)",
        "CREATE INDEX tourniquet_action_subjects_by_primary ON tourniquet_action_subjects "
        "(subject, agent, tool, position, action_time)",
        """CREATE TABLE tourniquet_traces (
            idempotency_key VARCHAR(255) NOT NULL PRIMARY KEY,
            recorded_at {ts} NOT NULL,
            task_name VARCHAR(253),
            model_input TEXT,
            retrieved_context TEXT,
            model_output TEXT
        )""",
        "CREATE INDEX tourniquet_traces_by_time ON tourniquet_traces (recorded_at)",
        "CREATE INDEX tourniquet_compensations_by_state ON tourniquet_compensations (incident, state)",
        """CREATE TABLE tourniquet_compensation_leases (
            incident VARCHAR(320) NOT NULL PRIMARY KEY,
            holder VARCHAR(255) NOT NULL,
            expires_at {ts} NOT NULL
        )""",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)

_ACTION_FIELDS = (
    "idempotency_key",
    "agent",
    "tool",
    "args_digest",
    "args_json",
    "action_time",
    "outcome",
    "result_summary",
    "attempts",
    "task_id",
    "bundle_revision",
    "bundle_hash",
    "amount",
    "amount_unit",
)
_ACTION_COLUMNS = ", ".join(_ACTION_FIELDS)
_ACTION_COLUMNS_OF_A = ", ".join(f"a.{name}" for name in _ACTION_FIELDS)
_ACTION_PLACEHOLDERS = ", ".join("?" * len(_ACTION_FIELDS))
_COMPENSATION_COLUMNS = "idempotency_key, incident, state, attempts, claimed_by, claimed_at, completed_at, detail"
_TRACE_COLUMNS = "idempotency_key, recorded_at, task_name, model_input, retrieved_context, model_output"


def _claimer() -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{threading.get_ident()}"


def worker_id() -> str:
    """A name for one compensation worker run: host, process and a random part (never reused)."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"


def _outcomes(outcomes: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(outcomes))
    unknown = [o for o in chosen if o not in OUTCOMES]
    if not chosen or unknown:
        raise ValueError(f"outcomes must be a non-empty selection of {', '.join(OUTCOMES)}; got {list(chosen)}")
    return chosen


def _chunks(items: Sequence[str], size: int = BATCH) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class SqlLedger(ABC):
    """The ledger logic in standard SQL; subclasses supply connections and a :class:`SqlDialect`."""

    dialect: SqlDialect

    @abstractmethod
    def _transaction(self, *, write: bool) -> AbstractContextManager[Cursor]:
        """A transaction (taking the write lock up front when ``write``), committed unless it raises."""

    @abstractmethod
    def close(self) -> None: ...

    def _lock_migrations(self, cur: Cursor) -> None:  # noqa: B027  (a hook: SQLite needs nothing here)
        """Serialise migrations between processes, inside the migration's transaction (SQLite's
        ``BEGIN IMMEDIATE`` already does)."""

    def __enter__(self) -> SqlLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- helpers ---------------------------------------------------------------------------------

    def _exec(self, cur: Cursor, statement: str, params: Sequence[Any] = ()) -> Cursor:
        cur.execute(self.dialect.sql(statement), list(params))
        return cur

    def _time(self, value: datetime, what: str) -> Any:
        return self.dialect.to_db_time(_require_utc(value, what))

    def _migrate(self) -> None:
        with self._transaction(write=True) as cur:
            self._lock_migrations(cur)
            self._exec(cur, "CREATE TABLE IF NOT EXISTS tourniquet_ledger_schema (version INTEGER NOT NULL)")
            row = self._exec(cur, "SELECT MAX(version) FROM tourniquet_ledger_schema").fetchone()
            current = int(row[0]) if row and row[0] is not None else 0
            if current > SCHEMA_VERSION:
                raise LedgerError(
                    f"the ledger's schema is version {current} but this library knows versions up to "
                    f"{SCHEMA_VERSION}: upgrade tourniquet before opening this ledger"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    self._exec(cur, statement.format(ts=self.dialect.timestamp_type))
                self._exec(cur, "INSERT INTO tourniquet_ledger_schema (version) VALUES (?)", [version])

    def schema_version(self) -> int:
        with self._transaction(write=False) as cur:
            row = self._exec(cur, "SELECT MAX(version) FROM tourniquet_ledger_schema").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def _row_to_action(self, row: Sequence[Any], subjects: Sequence[str]) -> Action:
        key, agent, tool, digest, args_json, when, outcome, summary, attempts = row[:9]
        task_id, revision, bundle_hash, amount, unit = row[9:]
        return Action(
            idempotency_key=key,
            agent=agent,
            tool=tool,
            args_digest=digest,
            args_json=args_json,
            subjects=tuple(subjects),
            time=self.dialect.from_db_time(when),
            outcome=outcome,
            result_summary=summary,
            attempts=int(attempts),
            task_id=task_id,
            bundle_revision=int(revision) if revision is not None else None,
            bundle_hash=bundle_hash,
            amount=int(amount) if amount is not None else None,
            amount_unit=unit,
        )

    def _load(self, cur: Cursor, key: str) -> Action | None:
        row = self._exec(cur, f"SELECT {_ACTION_COLUMNS} FROM tourniquet_actions WHERE idempotency_key = ?", [key])
        found = row.fetchone()
        if found is None:
            return None
        subjects = self._exec(
            cur,
            "SELECT subject FROM tourniquet_action_subjects WHERE idempotency_key = ? ORDER BY position",
            [key],
        ).fetchall()
        return self._row_to_action(found, [s[0] for s in subjects])

    def _window(
        self,
        agent: str,
        start: datetime,
        end: datetime | None,
        tools: Iterable[str] | None,
        outcomes: Iterable[str],
        alias: str = "a",
    ) -> tuple[str, list[Any]]:
        """The WHERE clause (over a table aliased ``alias`` with agent, action_time, outcome and tool) of a
        window query, and its parameters."""
        chosen = _outcomes(outcomes)
        clauses = [f"{alias}.agent = ?", f"{alias}.action_time >= ?", f"{alias}.outcome IN ({_marks(len(chosen))})"]
        params: list[Any] = [agent, self._time(start, "start"), *chosen]
        if end is not None:
            clauses.append(f"{alias}.action_time < ?")
            params.append(self._time(end, "end"))
        if tools is not None:
            tool_list = sorted(set(tools))
            if not tool_list:
                clauses.append("1 = 0")
            else:
                clauses.append(f"{alias}.tool IN ({_marks(len(tool_list))})")
                params += tool_list
        return " AND ".join(clauses), params

    # -- actions -----------------------------------------------------------------------------------

    def _write_trace(self, cur: Cursor, trace: Trace, *, replace_existing: bool) -> None:
        if replace_existing:
            self._exec(cur, "DELETE FROM tourniquet_traces WHERE idempotency_key = ?", [trace.idempotency_key])
        self._exec(
            cur,
            f"INSERT INTO tourniquet_traces ({_TRACE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (idempotency_key) DO NOTHING",
            [
                trace.idempotency_key,
                self.dialect.to_db_time(trace.recorded_at),
                trace.task_name,
                trace.model_input,
                trace.retrieved_context,
                trace.model_output,
            ],
        )

    def record(self, action: Action, trace: Trace | None = None) -> Action:
        """Store an action (and its trace); idempotent on its key (see the module docstring). Returns it as stored."""
        if trace is not None and trace.idempotency_key != action.idempotency_key:
            raise ValueError(
                f"the trace is of {trace.idempotency_key!r}, not of the action {action.idempotency_key!r}"
            )
        when = self.dialect.to_db_time(action.time)
        with self._transaction(write=True) as cur:
            inserted = self._exec(
                cur,
                f"INSERT INTO tourniquet_actions ({_ACTION_COLUMNS}) VALUES ({_ACTION_PLACEHOLDERS}) "
                "ON CONFLICT (idempotency_key) DO NOTHING",
                [
                    action.idempotency_key,
                    action.agent,
                    action.tool,
                    action.args_digest,
                    action.args_json,
                    when,
                    action.outcome,
                    action.result_summary,
                    action.attempts,
                    action.task_id,
                    action.bundle_revision,
                    action.bundle_hash,
                    action.amount,
                    action.amount_unit,
                ],
            ).rowcount
            if inserted == 1:
                for position, subject in enumerate(action.subjects):
                    self._exec(
                        cur,
                        "INSERT INTO tourniquet_action_subjects "
                        "(idempotency_key, position, subject, agent, tool, action_time, outcome) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [action.idempotency_key, position, subject, action.agent, action.tool, when, action.outcome],
                    )
                if trace is not None:
                    self._write_trace(cur, trace, replace_existing=False)
                return action
            stored = self._load(cur, action.idempotency_key)
            assert stored is not None, "a conflicting insert implies a stored row"
            if (stored.agent, stored.tool, stored.args_digest) != (action.agent, action.tool, action.args_digest):
                raise IdempotencyConflict(action.idempotency_key, stored, action)
            superseded = self._exec(
                cur,
                "UPDATE tourniquet_actions "
                "SET outcome = ?, action_time = ?, result_summary = ?, attempts = attempts + 1, "
                "bundle_revision = ?, bundle_hash = ? "
                f"WHERE idempotency_key = ? AND outcome IN ({_marks(len(SUPERSEDABLE_OUTCOMES))})",
                [
                    action.outcome,
                    when,
                    action.result_summary,
                    action.bundle_revision,
                    action.bundle_hash,
                    action.idempotency_key,
                    *SUPERSEDABLE_OUTCOMES,
                ],
            ).rowcount
            if superseded:
                self._exec(
                    cur,
                    "UPDATE tourniquet_action_subjects SET outcome = ?, action_time = ? WHERE idempotency_key = ?",
                    [action.outcome, when, action.idempotency_key],
                )
                if trace is not None:
                    self._write_trace(cur, trace, replace_existing=True)
                return replace(
                    stored,
                    outcome=action.outcome,
                    time=action.time,
                    result_summary=action.result_summary,
                    attempts=stored.attempts + 1,
                    bundle_revision=action.bundle_revision,
                    bundle_hash=action.bundle_hash,
                )
            return stored

    def get(self, idempotency_key: str) -> Action | None:
        with self._transaction(write=False) as cur:
            return self._load(cur, idempotency_key)

    def trace(self, idempotency_key: str) -> Trace | None:
        """The decision trace of an action; None when none was recorded or retention removed it."""
        with self._transaction(write=False) as cur:
            row = self._exec(
                cur, f"SELECT {_TRACE_COLUMNS} FROM tourniquet_traces WHERE idempotency_key = ?", [idempotency_key]
            ).fetchone()
        if row is None:
            return None
        key, recorded_at, task_name, model_input, context, output = row
        return Trace(
            idempotency_key=key,
            recorded_at=self.dialect.from_db_time(recorded_at),
            task_name=task_name,
            model_input=model_input,
            retrieved_context=context,
            model_output=output,
        )

    def prune_traces(self, before: datetime) -> int:
        """Delete the traces recorded before ``before`` (retention); returns how many went."""
        with self._transaction(write=True) as cur:
            return self._exec(
                cur, "DELETE FROM tourniquet_traces WHERE recorded_at < ?", [self._time(before, "before")]
            ).rowcount

    def actions(
        self,
        agent: str,
        start: datetime,
        end: datetime | None = None,
        *,
        tools: Iterable[str] | None = None,
        outcomes: Iterable[str] = ("ok",),
    ) -> list[Action]:
        """The agent's actions in ``[start, end)``, oldest first: an incident's blast radius."""
        where, params = self._window(agent, start, end, tools, outcomes)
        subject_where, subject_params = self._window(agent, start, end, tools, outcomes, alias="s")
        with self._transaction(write=False) as cur:
            rows = self._exec(
                cur,
                f"SELECT {_ACTION_COLUMNS_OF_A} FROM tourniquet_actions a "
                f"WHERE {where} ORDER BY a.action_time, a.idempotency_key",
                params,
            ).fetchall()
            subject_rows = self._exec(
                cur,
                "SELECT s.idempotency_key, s.position, s.subject FROM tourniquet_action_subjects s "
                f"WHERE {subject_where}",
                subject_params,
            ).fetchall()
        subjects: dict[str, list[tuple[int, str]]] = {}
        for key, position, subject in subject_rows:
            subjects.setdefault(key, []).append((int(position), subject))
        return [
            self._row_to_action(row, [s for _, s in sorted(subjects.get(row[0], ()))]) for row in rows
        ]

    def count_by_tool(
        self,
        agent: str,
        start: datetime,
        end: datetime | None = None,
        *,
        tools: Iterable[str] | None = None,
        outcomes: Iterable[str] = ("ok",),
    ) -> dict[str, int]:
        """How many actions each tool took in ``[start, end)``."""
        where, params = self._window(agent, start, end, tools, outcomes)
        with self._transaction(write=False) as cur:
            rows = self._exec(
                cur, f"SELECT a.tool, COUNT(*) FROM tourniquet_actions a WHERE {where} GROUP BY a.tool", params
            ).fetchall()
        return {tool: int(count) for tool, count in sorted(rows)}

    def subjects(
        self,
        agent: str,
        start: datetime,
        end: datetime | None = None,
        *,
        tools: Iterable[str] | None = None,
        outcomes: Iterable[str] = ("ok",),
    ) -> list[str]:
        """The distinct subjects the actions in ``[start, end)`` touched, sorted."""
        where, params = self._window(agent, start, end, tools, outcomes, alias="s")
        with self._transaction(write=False) as cur:
            rows = self._exec(
                cur,
                f"SELECT DISTINCT s.subject FROM tourniquet_action_subjects s WHERE {where} ORDER BY s.subject",
                params,
            ).fetchall()
        return [row[0] for row in rows]

    def subject_actions(
        self,
        agent: str,
        start: datetime,
        end: datetime | None = None,
        *,
        tools: Iterable[str] | None = None,
    ) -> list[tuple[str, str, int]]:
        """``(subject, tool, actions)`` for every subject the window's successful actions touched, sorted:
        the list for customer communication."""
        where, params = self._window(agent, start, end, tools, ("ok",), alias="s")
        with self._transaction(write=False) as cur:
            rows = self._exec(
                cur,
                f"SELECT s.subject, s.tool, COUNT(*) FROM tourniquet_action_subjects s WHERE {where} "
                "GROUP BY s.subject, s.tool ORDER BY s.subject, s.tool",
                params,
            ).fetchall()
        return [(subject, tool, int(count)) for subject, tool, count in rows]

    def blast_radius(
        self, agent: str, start: datetime, end: datetime | None = None, *, tools: Iterable[str] | None = None
    ) -> LedgerRadius:
        """Per tool, the successful actions in ``[start, end)``: how many, their distinct subjects, the sum of
        their declared amounts per unit, the first and last; plus the distinct subjects over every tool.
        Read in one snapshot."""
        tool_list = list(tools) if tools is not None else None
        where, params = self._window(agent, start, end, tool_list, ("ok",))
        subject_where, subject_params = self._window(agent, start, end, tool_list, ("ok",), alias="s")
        with self._transaction(write=False) as cur:
            totals = self._exec(
                cur,
                "SELECT a.tool, a.amount_unit, COUNT(*), SUM(a.amount), MIN(a.action_time), MAX(a.action_time) "
                f"FROM tourniquet_actions a WHERE {where} GROUP BY a.tool, a.amount_unit",
                params,
            ).fetchall()
            # DISTINCT in a subquery rather than COUNT(DISTINCT): PostgreSQL can hash it instead of sorting.
            per_tool = self._exec(
                cur,
                "SELECT d.tool, COUNT(*) FROM (SELECT DISTINCT s.tool, s.subject FROM tourniquet_action_subjects s "
                f"WHERE {subject_where}) d GROUP BY d.tool",
                subject_params,
            ).fetchall()
            overall = self._exec(
                cur,
                "SELECT COUNT(*) FROM (SELECT DISTINCT s.subject FROM tourniquet_action_subjects s "
                f"WHERE {subject_where}) d",
                subject_params,
            ).fetchone()
        subjects_by_tool = {tool: int(n) for tool, n in per_tool}
        grouped: dict[str, dict[str, Any]] = {}
        for tool, unit, count, total, first, last in totals:
            entry = grouped.setdefault(tool, {"actions": 0, "amounts": {}, "first": None, "last": None})
            entry["actions"] += int(count)
            if total is not None:
                entry["amounts"][unit or ""] = entry["amounts"].get(unit or "", 0) + int(total)
            first_time, last_time = self.dialect.from_db_time(first), self.dialect.from_db_time(last)
            entry["first"] = first_time if entry["first"] is None else min(entry["first"], first_time)
            entry["last"] = last_time if entry["last"] is None else max(entry["last"], last_time)
        radius = tuple(
            ToolRadius(
                tool=tool,
                actions=entry["actions"],
                subjects=subjects_by_tool.get(tool, 0),
                amounts=dict(sorted(entry["amounts"].items())),
                first=entry["first"],
                last=entry["last"],
            )
            for tool, entry in sorted(grouped.items())
        )
        return LedgerRadius(tools=radius, subjects=int(overall[0]) if overall else 0)

    def earlier_primary_subjects(
        self, agent: str, start: datetime, end: datetime | None = None, *, tools: Iterable[str] | None = None
    ) -> set[tuple[str, str]]:
        """``(tool, subject)`` pairs where the primary subject of a successful action in ``[start, end)`` had a
        successful action of the same tool *before* ``start``: what ``duplicatesOnly`` needs from beyond
        the window."""
        where, params = self._window(agent, start, end, tools, ("ok",), alias="w")
        with self._transaction(write=False) as cur:
            rows = self._exec(
                cur,
                f"SELECT DISTINCT w.tool, w.subject FROM tourniquet_action_subjects w WHERE {where} "
                "AND w.position = 0 AND EXISTS (SELECT 1 FROM tourniquet_action_subjects p "
                "WHERE p.subject = w.subject AND p.agent = w.agent AND p.tool = w.tool AND p.position = 0 "
                "AND p.outcome = 'ok' AND p.action_time < ?)",
                [*params, self._time(start, "start")],
            ).fetchall()
        return {(tool, subject) for tool, subject in rows}

    # -- compensation ------------------------------------------------------------------------------

    def claim_compensation(
        self, idempotency_key: str, incident: str, *, claimer: str | None = None, reclaim_after: timedelta | None = None
    ) -> bool:
        """Claim the compensation of one action for one incident: True for exactly one caller.

        A ``failed`` compensation may be claimed again; a claim older than ``reclaim_after`` (a crashed
        claimer) may be taken over. Raises :class:`UnknownAction` for a key the ledger never recorded.
        """
        now = utcnow()
        who = claimer or _claimer()
        with self._transaction(write=True) as cur:
            if (
                self._exec(
                    cur, "SELECT 1 FROM tourniquet_actions WHERE idempotency_key = ?", [idempotency_key]
                ).fetchone()
                is None
            ):
                raise UnknownAction(f"no action with idempotency key {idempotency_key!r} is in the ledger")
            inserted = self._exec(
                cur,
                f"INSERT INTO tourniquet_compensations ({_COMPENSATION_COLUMNS}) VALUES (?, ?, ?, 1, ?, ?, NULL, NULL) "
                "ON CONFLICT (incident, idempotency_key) DO NOTHING",
                [idempotency_key, incident, CLAIMED, who, self.dialect.to_db_time(now)],
            ).rowcount
            if inserted == 1:
                return True
            retry = "state = 'failed'"
            params: list[Any] = [CLAIMED, who, self.dialect.to_db_time(now), incident, idempotency_key]
            if reclaim_after is not None:
                retry += " OR (state = ? AND claimed_at < ?)"
                params += [CLAIMED, self.dialect.to_db_time(now - reclaim_after)]
            reclaimed = self._exec(
                cur,
                "UPDATE tourniquet_compensations SET state = ?, attempts = attempts + 1, claimed_by = ?, "
                "claimed_at = ?, completed_at = NULL, detail = NULL "
                f"WHERE incident = ? AND idempotency_key = ? AND ({retry})",
                params,
            ).rowcount
            return reclaimed == 1

    def claim_batch(self, incident: str, keys: Sequence[str], claimer: str) -> dict[str, int]:
        """Claim many compensations at once for a worker that holds the incident's lease (see
        :meth:`acquire_lease`): new ones, ``failed`` ones, and claims another holder left behind. Returns
        the keys now claimed by ``claimer`` with their claim count (more than 1: claimed before), in the
        order given; done, irreversible and skipped ones are not claimed.

        Only a lease holder may call this: taking over another's claim is safe only because no one else
        works on the incident while the lease is held.
        """
        if len(keys) > BATCH:
            raise ValueError(f"claim at most {BATCH} keys at once, not {len(keys)}")
        if not keys:
            return {}
        now = self.dialect.to_db_time(utcnow())
        unique = list(dict.fromkeys(keys))
        with self._transaction(write=True) as cur:
            known = {
                row[0]
                for row in self._exec(
                    cur,
                    f"SELECT idempotency_key FROM tourniquet_actions WHERE idempotency_key IN ({_marks(len(unique))})",
                    unique,
                ).fetchall()
            }
            missing = [k for k in unique if k not in known]
            if missing:
                raise UnknownAction(
                    f"{len(missing)} of the keys are not in the ledger (first: {missing[0]!r}); nothing was claimed"
                )
            values = ", ".join(["(?, ?, ?, 1, ?, ?, NULL, NULL)"] * len(unique))
            params: list[Any] = []
            for key in unique:
                params += [key, incident, CLAIMED, claimer, now]
            self._exec(
                cur,
                f"INSERT INTO tourniquet_compensations ({_COMPENSATION_COLUMNS}) VALUES {values} "
                "ON CONFLICT (incident, idempotency_key) DO NOTHING",
                params,
            )
            self._exec(
                cur,
                "UPDATE tourniquet_compensations SET state = ?, attempts = attempts + 1, claimed_by = ?, "
                "claimed_at = ?, completed_at = NULL, detail = NULL WHERE incident = ? "
                f"AND idempotency_key IN ({_marks(len(unique))}) "
                "AND (state = 'failed' OR (state = ? AND claimed_by <> ?))",
                [CLAIMED, claimer, now, incident, *unique, CLAIMED, claimer],
            )
            held = {
                row[0]: int(row[1])
                for row in self._exec(
                    cur,
                    "SELECT idempotency_key, attempts FROM tourniquet_compensations WHERE incident = ? AND state = ? "
                    f"AND claimed_by = ? AND idempotency_key IN ({_marks(len(unique))})",
                    [incident, CLAIMED, claimer, *unique],
                ).fetchall()
            }
        return {k: held[k] for k in unique if k in held}

    def complete_batch(
        self, incident: str, claimer: str, outcomes: Sequence[tuple[str, str, str | None]]
    ) -> None:
        """Record how many claimed compensations ended: ``(key, outcome, detail)`` each, in one transaction.
        Raises :class:`LedgerError` (and records nothing) when one of them is no longer claimed by ``claimer``."""
        groups: dict[tuple[str, str | None], list[str]] = {}
        for key, outcome, detail in outcomes:
            if outcome not in COMPENSATION_OUTCOMES:
                raise ValueError(
                    f"unknown compensation outcome {outcome!r}; expected one of {', '.join(COMPENSATION_OUTCOMES)}"
                )
            groups.setdefault((outcome, detail), []).append(key)
        now = self.dialect.to_db_time(utcnow())
        with self._transaction(write=True) as cur:
            for (outcome, detail), keys in groups.items():
                for chunk in _chunks(keys):
                    updated = self._exec(
                        cur,
                        "UPDATE tourniquet_compensations SET state = ?, completed_at = ?, detail = ? "
                        "WHERE incident = ? AND claimed_by = ? AND state = ? "
                        f"AND idempotency_key IN ({_marks(len(chunk))})",
                        [outcome, now, detail, incident, claimer, CLAIMED, *chunk],
                    ).rowcount
                    if updated != len(set(chunk)):
                        raise LedgerError(
                            f"{len(set(chunk)) - updated} of the compensations being completed for incident "
                            f"{incident!r} are no longer claimed by {claimer}: another worker took them over "
                            "(a lost lease?)"
                        )

    def complete_compensation(
        self, idempotency_key: str, incident: str, outcome: str, *, detail: str | None = None
    ) -> None:
        """Record how a claimed compensation ended: ``done``, ``failed`` (may be claimed again),
        ``irreversible`` or ``skipped``.

        Completing again with the same outcome is a no-op (a retry after a crash); anything else that
        is not a current claim raises :class:`LedgerError`.
        """
        if outcome not in COMPENSATION_OUTCOMES:
            raise ValueError(
                f"unknown compensation outcome {outcome!r}; expected one of {', '.join(COMPENSATION_OUTCOMES)}"
            )
        with self._transaction(write=True) as cur:
            updated = self._exec(
                cur,
                "UPDATE tourniquet_compensations SET state = ?, completed_at = ?, detail = ? "
                "WHERE incident = ? AND idempotency_key = ? AND state = ?",
                [outcome, self.dialect.to_db_time(utcnow()), detail, incident, idempotency_key, CLAIMED],
            ).rowcount
            if updated == 1:
                return
            row = self._exec(
                cur,
                "SELECT state FROM tourniquet_compensations WHERE incident = ? AND idempotency_key = ?",
                [incident, idempotency_key],
            ).fetchone()
        if row is None:
            raise LedgerError(
                f"the compensation of {idempotency_key!r} for incident {incident!r} was never claimed: "
                "call claim_compensation first"
            )
        if row[0] != outcome:
            raise LedgerError(
                f"the compensation of {idempotency_key!r} for incident {incident!r} is already {row[0]}, "
                f"not claimed: it cannot become {outcome}"
            )

    def compensation_state(self, incident: str) -> dict[str, CompensationRecord]:
        """Every compensation claimed for an incident, by the action's idempotency key."""
        with self._transaction(write=False) as cur:
            rows = self._exec(
                cur,
                f"SELECT {_COMPENSATION_COLUMNS} FROM tourniquet_compensations WHERE incident = ? "
                "ORDER BY idempotency_key",
                [incident],
            ).fetchall()
        records = {}
        for key, incident_name, state, attempts, claimed_by, claimed_at, completed_at, detail in rows:
            records[key] = CompensationRecord(
                idempotency_key=key,
                incident=incident_name,
                state=state,
                attempts=int(attempts),
                claimed_by=claimed_by,
                claimed_at=self.dialect.from_db_time(claimed_at),
                completed_at=self.dialect.from_db_time(completed_at) if completed_at is not None else None,
                detail=detail,
            )
        return records

    def compensation_counts(self, incident: str) -> dict[str, int]:
        """How many of an incident's compensations are in each state (``claimed``, ``done``, ...)."""
        with self._transaction(write=False) as cur:
            rows = self._exec(
                cur,
                "SELECT state, COUNT(*) FROM tourniquet_compensations WHERE incident = ? GROUP BY state",
                [incident],
            ).fetchall()
        return {state: int(n) for state, n in sorted(rows)}

    # -- the compensation lease ----------------------------------------------------------------------

    def acquire_lease(self, incident: str, holder: str, ttl: timedelta) -> bool:
        """Become the one worker compensating ``incident`` until ``now + ttl`` (renew before then). True when
        ``holder`` holds it now: it was free, expired, or already its own."""
        now = utcnow()
        expires = self.dialect.to_db_time(now + ttl)
        with self._transaction(write=True) as cur:
            inserted = self._exec(
                cur,
                "INSERT INTO tourniquet_compensation_leases (incident, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (incident) DO NOTHING",
                [incident, holder, expires],
            ).rowcount
            if inserted == 1:
                return True
            taken = self._exec(
                cur,
                "UPDATE tourniquet_compensation_leases SET holder = ?, expires_at = ? "
                "WHERE incident = ? AND (holder = ? OR expires_at < ?)",
                [holder, expires, incident, holder, self.dialect.to_db_time(now)],
            ).rowcount
            return taken == 1

    def renew_lease(self, incident: str, holder: str, ttl: timedelta) -> bool:
        """Extend a lease ``holder`` still holds; False when it lost it (expired and taken by another)."""
        with self._transaction(write=True) as cur:
            return (
                self._exec(
                    cur,
                    "UPDATE tourniquet_compensation_leases SET expires_at = ? WHERE incident = ? AND holder = ?",
                    [self.dialect.to_db_time(utcnow() + ttl), incident, holder],
                ).rowcount
                == 1
            )

    def release_lease(self, incident: str, holder: str) -> None:
        with self._transaction(write=True) as cur:
            self._exec(
                cur, "DELETE FROM tourniquet_compensation_leases WHERE incident = ? AND holder = ?", [incident, holder]
            )

    def lease_holder(self, incident: str) -> tuple[str, datetime] | None:
        """Who holds the incident's lease and until when (possibly expired), or None."""
        with self._transaction(write=False) as cur:
            row = self._exec(
                cur, "SELECT holder, expires_at FROM tourniquet_compensation_leases WHERE incident = ?", [incident]
            ).fetchone()
        return (row[0], self.dialect.from_db_time(row[1])) if row else None


def redacted_url(url: str) -> str:
    """A database URL fit for a log line: the password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


DEFAULT_LEDGER = "/var/lib/tourniquet/ledger.db"


def ledger_target_from_env(environ: Mapping[str, str]) -> str:
    """Where the ledger is, from the environment: ``TOURNIQUET_LEDGER_URL_FILE`` (a file holding the URL,
    e.g. a mounted Secret's key) first, else ``TOURNIQUET_LEDGER`` (a path or URL), else the default file."""
    url_file = environ.get("TOURNIQUET_LEDGER_URL_FILE", "").strip()
    if url_file:
        try:
            url = Path(url_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise LedgerError(f"cannot read TOURNIQUET_LEDGER_URL_FILE={url_file}: {exc}") from exc
        if not url:
            raise LedgerError(f"TOURNIQUET_LEDGER_URL_FILE={url_file} is empty: it should hold the ledger's URL")
        return url
    return environ.get("TOURNIQUET_LEDGER", "").strip() or DEFAULT_LEDGER


def open_ledger(target: str | os.PathLike[str], **options: Any) -> SqlLedger:
    """The ledger at ``target``: a ``postgresql://`` (or ``postgres://``) URL opens the shared
    :class:`~tourniquet.runtime.postgres.PostgresLedger`; a ``sqlite:///path`` URL or a plain path opens
    a :class:`SqliteLedger`. ``options`` go to the backend's constructor."""
    text = os.fspath(target)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in ("postgresql", "postgres"):
        from tourniquet.runtime.postgres import PostgresLedger

        return PostgresLedger(text, **options)
    if scheme == "sqlite":
        if not text.lower().startswith("sqlite:///"):
            raise LedgerError(
                f"a SQLite ledger URL is sqlite:///relative/path or sqlite:////absolute/path, not {text!r}"
            )
        return SqliteLedger(text[len("sqlite:///") :], **options)
    if scheme:
        raise LedgerError(f"unknown ledger URL scheme {scheme!r}: use postgresql://..., sqlite:///path or a file path")
    return SqliteLedger(text, **options)


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced (the plain class cannot)."""


class SqliteLedger(SqlLedger):
    """The default ledger: one SQLite file in WAL mode, safe across threads and processes.

    Each thread gets its own connection; SQLite's file locks (``BEGIN IMMEDIATE`` for every write, a
    busy timeout for waiting) make the races in ``record`` and ``claim_compensation`` safe between
    processes too. A database in memory is refused, because each connection would see its own.
    """

    dialect = SQLITE

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 10.0) -> None:
        if str(path) in ("", ":memory:") or str(path).startswith("file::memory:"):
            raise ValueError("SqliteLedger needs a file (every thread opens its own connection); use a temporary file")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._connections_lock = threading.Lock()
        self._closed = False
        self._connection().execute("PRAGMA journal_mode=WAL")
        self._migrate()

    def _connection(self) -> _Connection:
        if self._closed:
            raise LedgerError(f"the ledger {self.path} is closed")
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # only close() touches it from another thread
                factory=_Connection,
            )
            conn.execute("PRAGMA synchronous=FULL")  # a ledger: a recorded action must survive power loss
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.add(conn)
        return conn

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Cursor]:
        conn = self._connection()
        cur = conn.cursor()
        # IMMEDIATE takes the write lock up front, so check-then-write sequences cannot interleave.
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield cur
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()
        finally:
            cur.close()

    def close(self) -> None:
        """Close every connection this ledger opened (from any thread)."""
        self._closed = True
        with self._connections_lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            conn.close()

    def __repr__(self) -> str:
        return f"SqliteLedger({str(self.path)!r})"
