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

The code, every name importable from here: :mod:`.ledger_records` (the records, the errors, the interface),
:mod:`.ledger_schema` (dialects, migrations, columns), :mod:`.ledger_actions` and :mod:`.ledger_compensation`
(:class:`SqlLedger`'s two halves: actions and traces, then compensation claims and leases), and this module
(:class:`SqliteLedger` and opening a ledger).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The ledger's names, all importable from here.
from tourniquet.runtime.ledger_actions import SqlActions
from tourniquet.runtime.ledger_compensation import SqlLedger
from tourniquet.runtime.ledger_records import (
    BATCH,
    CLAIMED,
    COMPENSATION_OUTCOMES,
    MAX_KEY_LENGTH,
    MAX_UNIT_LENGTH,
    OUTCOMES,
    SUPERSEDABLE_OUTCOMES,
    Action,
    CompensationRecord,
    IdempotencyConflict,
    Ledger,
    LedgerError,
    LedgerRadius,
    LedgerUnavailable,
    ToolRadius,
    Trace,
    UnknownAction,
    args_digest,
    canonical_json,
    derive_idempotency_key,
    utcnow,
)
from tourniquet.runtime.ledger_schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SQLITE,
    Cursor,
    SqlDialect,
    redacted_url,
    worker_id,
)

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
        self._busy: set[_Connection] = set()  # in a transaction now: close() leaves them to their threads
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
        with self._connections_lock:
            if self._closed:
                raise LedgerError(f"the ledger {self.path} is closed")
            self._busy.add(conn)
        try:
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
        finally:
            with self._connections_lock:
                self._busy.discard(conn)
                closed = self._closed
            if closed:  # close() came during the transaction and left the connection to this thread
                conn.close()

    def close(self) -> None:
        """Close every connection this ledger opened (from any thread). One in a transaction in another thread (an
        operator's read still running when it stops) is closed by that thread when the transaction ends: closing a
        connection under a statement running in another thread can crash the process."""
        with self._connections_lock:
            self._closed = True
            idle = [conn for conn in self._connections if conn not in self._busy]
            self._connections.clear()
        for conn in idle:
            conn.close()

    def __repr__(self) -> str:
        return f"SqliteLedger({str(self.path)!r})"


__all__ = [
    "BATCH",
    "CLAIMED",
    "COMPENSATION_OUTCOMES",
    "DEFAULT_LEDGER",
    "MAX_KEY_LENGTH",
    "MAX_UNIT_LENGTH",
    "MIGRATIONS",
    "OUTCOMES",
    "SCHEMA_VERSION",
    "SQLITE",
    "SUPERSEDABLE_OUTCOMES",
    "Action",
    "CompensationRecord",
    "Cursor",
    "IdempotencyConflict",
    "Ledger",
    "LedgerError",
    "LedgerRadius",
    "LedgerUnavailable",
    "SqlActions",
    "SqlDialect",
    "SqlLedger",
    "SqliteLedger",
    "ToolRadius",
    "Trace",
    "UnknownAction",
    "args_digest",
    "canonical_json",
    "derive_idempotency_key",
    "ledger_target_from_env",
    "open_ledger",
    "redacted_url",
    "utcnow",
    "worker_id",
]
