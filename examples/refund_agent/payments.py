"""A fake payments service for the demo: orders, refunds and reversals in tables of the ledger's database.

Like a real payment API it is idempotent on the key the caller passes: refunding twice with one key
makes one refund, reversing a refund twice makes one reversal. It also logs every reversal *call*
(``demo_calls``, no uniqueness), so a test can tell a compensation that was made once from one that was
attempted twice and absorbed by the idempotency key.

``Payments(target)`` takes what the ledger takes: a ``postgresql://`` URL (the same database as the
ledger, its own connection pool) or a SQLite file path.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS demo_orders (
        order_id VARCHAR(64) NOT NULL PRIMARY KEY,
        customer VARCHAR(64) NOT NULL,
        amount_cents BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS demo_refunds (
        refund_key VARCHAR(255) NOT NULL PRIMARY KEY,
        order_id VARCHAR(64) NOT NULL,
        amount_cents BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS demo_reversals (
        refund_key VARCHAR(255) NOT NULL PRIMARY KEY,
        order_id VARCHAR(64) NOT NULL,
        amount_cents BIGINT NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS demo_calls (kind VARCHAR(16) NOT NULL, refund_key VARCHAR(255) NOT NULL)",
    "CREATE INDEX IF NOT EXISTS demo_refunds_by_order ON demo_refunds (order_id)",
    "CREATE INDEX IF NOT EXISTS demo_reversals_by_order ON demo_reversals (order_id)",
]


class UnknownRefund(LookupError):
    """No refund with this key was ever made."""


class Payments:
    """Orders, refunds (keyed by the refunding action's idempotency key) and their reversals."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.postgres = target.startswith(("postgresql://", "postgres://"))
        self._local = threading.local()
        self._sqlite_connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._pool: Any = None
        if self.postgres:
            from psycopg_pool import ConnectionPool

            self._pool = ConnectionPool(target, min_size=1, max_size=8, kwargs={"autocommit": True}, open=True)
        with self._cursor() as cur:
            if self.postgres:  # several processes may start at once
                cur.execute("SELECT pg_advisory_xact_lock(4242)")
            for statement in SCHEMA:
                cur.execute(statement)

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        """A cursor inside one transaction; ``%s`` placeholders on both databases."""
        if self.postgres:
            with self._pool.connection() as conn, conn.transaction():
                yield conn.cursor()
            return
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.target, timeout=30, isolation_level=None, check_same_thread=False)
            self._local.conn = conn
            with self._lock:
                self._sqlite_connections.append(conn)
        cur = _QmarkCursor(conn.cursor())
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        with self._lock:
            for conn in self._sqlite_connections:
                conn.close()
            self._sqlite_connections.clear()

    # -- the API the agent and its compensator use ---------------------------------------------------

    def add_orders(self, orders: Iterable[tuple[str, str, int]]) -> None:
        """``(order_id, customer, amount_cents)`` each."""
        with self._cursor() as cur:
            for order in orders:
                cur.execute(
                    "INSERT INTO demo_orders (order_id, customer, amount_cents) VALUES (%s, %s, %s) "
                    "ON CONFLICT (order_id) DO NOTHING",
                    order,
                )

    def order(self, order_id: str) -> dict[str, Any] | None:
        """The order, with what was refunded for it so far (net of reversals)."""
        with self._cursor() as cur:
            cur.execute(
                "SELECT o.order_id, o.customer, o.amount_cents, "
                "(SELECT COALESCE(SUM(amount_cents), 0) FROM demo_refunds WHERE order_id = o.order_id) - "
                "(SELECT COALESCE(SUM(amount_cents), 0) FROM demo_reversals WHERE order_id = o.order_id) "
                "FROM demo_orders o WHERE o.order_id = %s",
                [order_id],
            )
            row = cur.fetchone()
        if row is None:
            return None
        return {"order_id": row[0], "customer": row[1], "amount_cents": int(row[2]), "refunded_cents": int(row[3])}

    def refunded_cents(self, order_id: str) -> int:
        """What the customer got back for this order, net of reversals."""
        with self._cursor() as cur:
            cur.execute(
                "SELECT (SELECT COALESCE(SUM(amount_cents), 0) FROM demo_refunds WHERE order_id = %s) - "
                "(SELECT COALESCE(SUM(amount_cents), 0) FROM demo_reversals WHERE order_id = %s)",
                [order_id, order_id],
            )
            return int(cur.fetchone()[0])

    def refund(self, order_id: str, amount_cents: int, *, idempotency_key: str) -> str:
        """Refund an order; the same key refunds once. Returns the refund's key."""
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO demo_refunds (refund_key, order_id, amount_cents) VALUES (%s, %s, %s) "
                "ON CONFLICT (refund_key) DO NOTHING",
                [idempotency_key, order_id, amount_cents],
            )
        return idempotency_key

    def reverse(self, refund_key: str) -> None:
        """Reverse the refund made with ``refund_key``; reversing it again changes nothing."""
        with self._cursor() as cur:
            cur.execute("INSERT INTO demo_calls (kind, refund_key) VALUES ('reverse', %s)", [refund_key])
            cur.execute("SELECT order_id, amount_cents FROM demo_refunds WHERE refund_key = %s", [refund_key])
            row = cur.fetchone()
            if row is None:
                raise UnknownRefund(f"no refund {refund_key!r}")
            cur.execute(
                "INSERT INTO demo_reversals (refund_key, order_id, amount_cents) VALUES (%s, %s, %s) "
                "ON CONFLICT (refund_key) DO NOTHING",
                [refund_key, row[0], row[1]],
            )

    # -- what the demo and the tests check -----------------------------------------------------------

    def net_by_order(self) -> dict[str, int]:
        """Every order that was ever refunded: its net refunded cents."""
        with self._cursor() as cur:
            cur.execute(
                "SELECT r.order_id, SUM(r.amount_cents) - COALESCE(MAX(v.total), 0) FROM demo_refunds r "
                "LEFT JOIN (SELECT order_id, SUM(amount_cents) AS total FROM demo_reversals GROUP BY order_id) v "
                "ON v.order_id = r.order_id GROUP BY r.order_id"
            )
            return {order: int(net) for order, net in cur.fetchall()}

    def reversed_keys(self) -> set[str]:
        with self._cursor() as cur:
            cur.execute("SELECT refund_key FROM demo_reversals")
            return {row[0] for row in cur.fetchall()}

    def reversal_calls(self) -> int:
        with self._cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM demo_calls WHERE kind = 'reverse'")
            return int(cur.fetchone()[0])

    def reversals(self) -> int:
        with self._cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM demo_reversals")
            return int(cur.fetchone()[0])

    def overpaid_orders(self) -> dict[str, int]:
        """Orders refunded more than their amount: the damage a duplicate-refund incident leaves."""
        with self._cursor() as cur:
            cur.execute("SELECT order_id, amount_cents FROM demo_orders")
            amounts = {order: int(amount) for order, amount in cur.fetchall()}
        return {order: net for order, net in self.net_by_order().items() if net > amounts.get(order, 0)}


class _QmarkCursor:
    """A SQLite cursor that takes ``%s`` placeholders, so the SQL above is written once."""

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._cur.execute(sql.replace("%s", "?"), list(params))

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()
