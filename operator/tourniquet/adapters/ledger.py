"""The agents' shared action ledger, as the operator reads it: one open ledger per URL, calls off the event loop.

The ledger's API is synchronous (psycopg 3's pool, or SQLite): each read runs in a worker thread so the
containment passes are never blocked by a slow database. A ledger that fails (``LedgerUnavailable``) is closed
and opened again at the next read, so a database that comes back is found again. The open ledgers are the
operator's (:class:`Ledgers`, made at start-up and closed at cleanup).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from tourniquet.runtime.ledger import LedgerError, LedgerUnavailable, SqlLedger, open_ledger, redacted_url

log = logging.getLogger(__name__)
T = TypeVar("T")

# The operator waits this long for a PostgreSQL ledger: longer and a pass waits on a database that is down.
CONNECT_TIMEOUT_SECONDS = 3
POOL_TIMEOUT_SECONDS = 5.0


class Ledgers:
    """The ledgers one operator has open, by URL (a PostgreSQL ledger is a small connection pool)."""

    def __init__(self) -> None:
        self._ledgers: dict[str, SqlLedger] = {}
        self._lock = threading.Lock()  # reads run in worker threads

    def _open(self, url: str) -> SqlLedger:
        with self._lock:
            ledger = self._ledgers.get(url)
            if ledger is None:
                options = {}
                if url.split("://", 1)[0].lower() in ("postgresql", "postgres"):
                    options = {
                        "min_size": 1,
                        "max_size": 2,
                        "timeout": POOL_TIMEOUT_SECONDS,
                        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                        "application_name": "tourniquet-operator",
                    }
                ledger = open_ledger(url, **options)
                self._ledgers[url] = ledger
            return ledger

    def _forget(self, url: str) -> None:
        with self._lock:
            ledger = self._ledgers.pop(url, None)
        if ledger is not None:
            try:
                ledger.close()
            except Exception as exc:  # closing a broken pool is best effort
                log.debug("Closing the ledger %s: %s", redacted_url(url), exc)

    async def read(self, url: str, read: Callable[[SqlLedger], T]) -> T:
        """``read(ledger)`` in a worker thread; raises LedgerUnavailable (or LedgerError) when it cannot be done."""

        def run() -> T:
            try:
                return read(self._open(url))
            except LedgerUnavailable:
                self._forget(url)
                raise
            except LedgerError:
                raise
            except (OSError, ValueError) as exc:  # e.g. a SQLite path that cannot be opened, a malformed URL
                self._forget(url)
                raise LedgerUnavailable(f"cannot open the ledger {redacted_url(url)}: {exc}") from exc

        return await asyncio.to_thread(run)

    def close(self) -> None:
        """Close every ledger opened (at shutdown)."""
        with self._lock:
            urls = list(self._ledgers)
        for url in urls:
            self._forget(url)


async def read_once(url: str, read: Callable[[SqlLedger], T]) -> T:
    """``read(ledger)`` on a ledger opened for this read alone (no operator's ledgers at hand: a test, a CLI)."""
    ledgers = Ledgers()
    try:
        return await ledgers.read(url, read)
    finally:
        await asyncio.to_thread(ledgers.close)
