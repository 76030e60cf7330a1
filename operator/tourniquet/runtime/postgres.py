"""The shared ledger on PostgreSQL: every replica of every agent writes to it, the operator reads it.

The queries and migrations are :class:`~tourniquet.runtime.ledger.SqlLedger`'s, shared with SQLite;
this module only says how to talk to PostgreSQL: psycopg 3 with a ``psycopg_pool`` connection pool
(connections in autocommit mode, the transactions begun here), ``%s`` placeholders, ``TIMESTAMP WITH
TIME ZONE`` columns. Writes run at READ COMMITTED, where the ledger's ``INSERT ... ON CONFLICT DO
NOTHING`` and conditional ``UPDATE`` statements are race-free; reads run in one REPEATABLE READ READ
ONLY snapshot, so a blast radius's counts agree with each other. Migrations take a transaction-scoped
advisory lock, so agents starting together on a new database migrate it once.

A server that cannot be reached (or a pool with no free connection within ``timeout`` seconds) raises
:class:`~tourniquet.runtime.ledger.LedgerUnavailable`, which callers may retry.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from tourniquet.runtime.ledger_compensation import SqlLedger
from tourniquet.runtime.ledger_records import LedgerError, LedgerUnavailable
from tourniquet.runtime.ledger_schema import Cursor, SqlDialect, redacted_url

# An arbitrary constant: the advisory lock that serialises the ledger's migrations.
MIGRATION_LOCK = 0x746F75726E69


def _to_db(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _from_db(value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"expected a timestamp from PostgreSQL, got {value!r}")
    return value.astimezone(UTC)


POSTGRES = SqlDialect(
    placeholder="%s", timestamp_type="TIMESTAMP WITH TIME ZONE", to_db_time=_to_db, from_db_time=_from_db
)


class PostgresLedger(SqlLedger):
    """The ledger in a PostgreSQL database, through a pool of ``min_size`` to ``max_size`` connections."""

    dialect = POSTGRES

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        timeout: float = 10.0,
        connect_timeout: int = 5,
        application_name: str = "tourniquet-ledger",
        work_mem: str = "64MB",
    ) -> None:
        self.url = url
        self._closed = False
        self._timeout = timeout
        self.pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            kwargs={
                "autocommit": True,
                "connect_timeout": connect_timeout,
                "application_name": application_name,
                # A blast radius over a wide window counts distinct subjects in a hash table: let it fit in memory.
                "options": f"-c work_mem={work_mem}",
            },
            open=False,
            name="tourniquet-ledger",
        )
        try:
            self.pool.open(wait=True, timeout=timeout)
        except PoolTimeout as exc:
            self.pool.close()
            raise LedgerUnavailable(
                f"cannot reach the ledger database {redacted_url(url)} within {timeout:g}s ({self._cause(exc)}); "
                "check the URL, the network and the server"
            ) from exc
        try:
            self._migrate()
        except BaseException:
            self.pool.close()
            raise

    def _cause(self, exc: BaseException) -> str:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

    def _lock_migrations(self, cur: Cursor) -> None:
        self._exec(cur, "SELECT pg_advisory_xact_lock(?)", [MIGRATION_LOCK])

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Cursor]:
        if self._closed:
            raise LedgerError(f"the ledger {redacted_url(self.url)} is closed")
        try:
            with self.pool.connection() as conn:
                cur = conn.cursor()
                try:
                    cur.execute("BEGIN" if write else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    try:
                        yield cur
                    except BaseException:
                        if not conn.broken:
                            conn.execute("ROLLBACK")
                        raise
                    else:
                        conn.execute("COMMIT")
                finally:
                    cur.close()
        except PoolTimeout as exc:
            raise LedgerUnavailable(
                f"no connection to the ledger database {redacted_url(self.url)} within {self._timeout:g}s "
                f"({self._cause(exc)})"
            ) from exc
        except psycopg.errors.TransactionRollback:
            raise  # a deadlock or serialization failure: the database is there, the caller may retry
        except psycopg.OperationalError as exc:
            raise LedgerUnavailable(
                f"the ledger database {redacted_url(self.url)} is unavailable: {self._cause(exc)}"
            ) from exc

    def close(self) -> None:
        self._closed = True
        self.pool.close()

    def __repr__(self) -> str:
        return f"PostgresLedger({redacted_url(self.url)!r})"
