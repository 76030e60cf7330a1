"""The ledger's SQL: the dialects (placeholders, the timestamp column), the migrations and the column lists
both backends share."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from tourniquet.runtime.ledger_records import BATCH, OUTCOMES


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


def redacted_url(url: str) -> str:
    """A database URL fit for a log line: the password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))
