"""The action ledger: every side-effecting tool call, keyed for idempotency, plus compensation bookkeeping.

One row is one *action*: a tool called with given arguments for a given piece of work, named by its
idempotency key. The operator reads the ledger to size an incident's blast radius (the actions in the
incident window) and to compensate each of those actions exactly once.

Rules that matter:

* ``record`` is idempotent on the key. The same key with the same arguments returns the stored action;
  the same key with different arguments raises :class:`IdempotencyConflict` (one key names one action).
  An ``ok`` outcome is final. An ``error`` or ``shadowed`` record is superseded by a later attempt of the
  same action (a retry after a failure, or the real call once shadow mode ends), so one action stays one
  row and ``attempts`` says how often it was tried.
* ``claim_compensation`` is an atomic unique-row insert: across threads and processes exactly one caller
  gets ``True`` for an (incident, action) pair. A compensation that ended ``failed`` can be claimed again
  (by exactly one caller); a claim left behind by a crashed process can be taken over with
  ``reclaim_after``, which turns "exactly once" into "at least once" for that one crash: make the
  compensating call itself idempotent (pass the action's key to the remote side).
* Times are timezone-aware UTC; windows are half-open, ``start <= time < end``.

Backends. :class:`SqliteLedger` is the default: one file, WAL mode, one connection per thread, write
transactions taken with ``BEGIN IMMEDIATE``. The queries live in :class:`SqlLedger` and use only what
SQLite and PostgreSQL share: plain DDL, ``INSERT ... ON CONFLICT (...) DO NOTHING`` and conditional
``UPDATE`` for every race (both stay correct under PostgreSQL's READ COMMITTED), and no ``INSERT OR
REPLACE``, ``RETURNING`` or JSON functions. The dialect bits are isolated: :class:`SqlDialect` holds the
placeholder style and the timestamp column type and its conversion, and a subclass's ``_transaction``
says how a transaction begins and where connections come from. A PostgreSQL backend is therefore a
subclass with ``%s`` placeholders, ``TIMESTAMP WITH TIME ZONE`` columns (datetimes passed through),
a plain ``BEGIN`` and a connection pool; migrations and queries are shared. The schema version is kept
in the ``tourniquet_ledger_schema`` table, and opening a ledger applies any newer migrations.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
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
from uuid import UUID

OUTCOMES = ("ok", "error", "shadowed")
SUPERSEDABLE_OUTCOMES = ("error", "shadowed")
COMPENSATION_OUTCOMES = ("done", "failed", "irreversible")
CLAIMED = "claimed"
MAX_KEY_LENGTH = 255


class LedgerError(Exception):
    """A ledger operation was refused; the message says why and what to do."""


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

    def __post_init__(self) -> None:
        if not self.idempotency_key or len(self.idempotency_key) > MAX_KEY_LENGTH:
            raise ValueError(
                f"an idempotency key has 1 to {MAX_KEY_LENGTH} characters; got {len(self.idempotency_key)}"
            )
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown action outcome {self.outcome!r}; expected one of {', '.join(OUTCOMES)}")
        object.__setattr__(self, "time", _require_utc(self.time, "Action.time"))
        object.__setattr__(self, "subjects", tuple(dict.fromkeys(self.subjects)))

    @property
    def args(self) -> dict[str, Any]:
        """The stored arguments (as redacted by the guard, if it was given a redact hook)."""
        loaded: dict[str, Any] = json.loads(self.args_json)
        return loaded


@dataclass(frozen=True)
class CompensationRecord:
    """Where the compensation of one action stands within one incident."""

    idempotency_key: str
    incident: str
    state: str  # claimed | done | failed | irreversible
    attempts: int
    claimed_by: str | None
    claimed_at: datetime
    completed_at: datetime | None = None
    detail: str | None = None


@runtime_checkable
class Ledger(Protocol):
    """What the guard writes and the operator reads; see the module docstring for the rules."""

    def record(self, action: Action) -> Action:
        """Store an action; idempotent on its key. Returns the action as stored."""
        ...

    def get(self, idempotency_key: str) -> Action | None: ...

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

# Each migration is a list of statements; {ts} is the dialect's timestamp column type.
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
        """CREATE TABLE tourniquet_compensations (
            incident VARCHAR(253) NOT NULL,
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
)
_ACTION_COLUMNS = ", ".join(_ACTION_FIELDS)
_ACTION_COLUMNS_OF_A = ", ".join(f"a.{name}" for name in _ACTION_FIELDS)
_COMPENSATION_COLUMNS = "idempotency_key, incident, state, attempts, claimed_by, claimed_at, completed_at, detail"


def _claimer() -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{threading.get_ident()}"


def _outcomes(outcomes: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(outcomes))
    unknown = [o for o in chosen if o not in OUTCOMES]
    if not chosen or unknown:
        raise ValueError(f"outcomes must be a non-empty selection of {', '.join(OUTCOMES)}; got {list(chosen)}")
    return chosen


class SqlLedger(ABC):
    """The ledger logic in standard SQL; subclasses supply connections and a :class:`SqlDialect`."""

    dialect: SqlDialect

    @abstractmethod
    def _transaction(self, *, write: bool) -> AbstractContextManager[Cursor]:
        """A transaction (taking the write lock up front when ``write``), committed unless it raises."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> SqlLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- helpers ---------------------------------------------------------------------------------

    def _exec(self, cur: Cursor, statement: str, params: Sequence[Any] = ()) -> Cursor:
        cur.execute(self.dialect.sql(statement), list(params))
        return cur

    def _migrate(self) -> None:
        with self._transaction(write=True) as cur:
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
        key, agent, tool, digest, args_json, when, outcome, summary, attempts = row
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
        self, agent: str, start: datetime, end: datetime | None, tools: Iterable[str] | None, outcomes: Iterable[str]
    ) -> tuple[str, list[Any]]:
        """The WHERE clause (over ``tourniquet_actions a``) of a window query, and its parameters."""
        chosen = _outcomes(outcomes)
        clauses = ["a.agent = ?", "a.action_time >= ?", f"a.outcome IN ({', '.join('?' * len(chosen))})"]
        params: list[Any] = [agent, self.dialect.to_db_time(_require_utc(start, "start")), *chosen]
        if end is not None:
            clauses.append("a.action_time < ?")
            params.append(self.dialect.to_db_time(_require_utc(end, "end")))
        if tools is not None:
            tool_list = sorted(set(tools))
            if not tool_list:
                clauses.append("1 = 0")
            else:
                clauses.append(f"a.tool IN ({', '.join('?' * len(tool_list))})")
                params += tool_list
        return " AND ".join(clauses), params

    # -- actions -----------------------------------------------------------------------------------

    def record(self, action: Action) -> Action:
        """Store an action; idempotent on its key (see the module docstring). Returns it as stored."""
        with self._transaction(write=True) as cur:
            inserted = self._exec(
                cur,
                f"INSERT INTO tourniquet_actions ({_ACTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (idempotency_key) DO NOTHING",
                [
                    action.idempotency_key,
                    action.agent,
                    action.tool,
                    action.args_digest,
                    action.args_json,
                    self.dialect.to_db_time(action.time),
                    action.outcome,
                    action.result_summary,
                    action.attempts,
                ],
            ).rowcount
            if inserted == 1:
                for position, subject in enumerate(action.subjects):
                    self._exec(
                        cur,
                        "INSERT INTO tourniquet_action_subjects (idempotency_key, position, subject) VALUES (?, ?, ?)",
                        [action.idempotency_key, position, subject],
                    )
                return action
            stored = self._load(cur, action.idempotency_key)
            assert stored is not None, "a conflicting insert implies a stored row"
            if (stored.agent, stored.tool, stored.args_digest) != (action.agent, action.tool, action.args_digest):
                raise IdempotencyConflict(action.idempotency_key, stored, action)
            superseded = self._exec(
                cur,
                "UPDATE tourniquet_actions "
                "SET outcome = ?, action_time = ?, result_summary = ?, attempts = attempts + 1 "
                f"WHERE idempotency_key = ? AND outcome IN ({', '.join('?' * len(SUPERSEDABLE_OUTCOMES))})",
                [
                    action.outcome,
                    self.dialect.to_db_time(action.time),
                    action.result_summary,
                    action.idempotency_key,
                    *SUPERSEDABLE_OUTCOMES,
                ],
            ).rowcount
            if superseded:
                return replace(
                    stored,
                    outcome=action.outcome,
                    time=action.time,
                    result_summary=action.result_summary,
                    attempts=stored.attempts + 1,
                )
            return stored

    def get(self, idempotency_key: str) -> Action | None:
        with self._transaction(write=False) as cur:
            return self._load(cur, idempotency_key)

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
        with self._transaction(write=False) as cur:
            rows = self._exec(
                cur,
                f"SELECT {_ACTION_COLUMNS_OF_A} FROM tourniquet_actions a "
                f"WHERE {where} ORDER BY a.action_time, a.idempotency_key",
                params,
            ).fetchall()
            subject_rows = self._exec(
                cur,
                "SELECT s.idempotency_key, s.subject FROM tourniquet_action_subjects s "
                f"JOIN tourniquet_actions a ON a.idempotency_key = s.idempotency_key WHERE {where} "
                "ORDER BY s.idempotency_key, s.position",
                params,
            ).fetchall()
        subjects: dict[str, list[str]] = {}
        for key, subject in subject_rows:
            subjects.setdefault(key, []).append(subject)
        return [self._row_to_action(row, subjects.get(row[0], ())) for row in rows]

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
        where, params = self._window(agent, start, end, tools, outcomes)
        with self._transaction(write=False) as cur:
            rows = self._exec(
                cur,
                "SELECT DISTINCT s.subject FROM tourniquet_action_subjects s "
                f"JOIN tourniquet_actions a ON a.idempotency_key = s.idempotency_key WHERE {where} ORDER BY s.subject",
                params,
            ).fetchall()
        return [row[0] for row in rows]

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

    def complete_compensation(
        self, idempotency_key: str, incident: str, outcome: str, *, detail: str | None = None
    ) -> None:
        """Record how a claimed compensation ended: ``done``, ``failed`` (may be claimed again) or ``irreversible``.

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
