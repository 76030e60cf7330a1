"""The agents' shared action ledger, as the operator reads it: one open ledger per URL, calls off the event loop.

The ledger's API is synchronous (psycopg 3's pool, or SQLite): each read runs in a worker thread so the
containment passes are never blocked by a slow database. A ledger that fails (``LedgerUnavailable``) is closed
and opened again at the next read, so a database that comes back is found again.
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

_ledgers: dict[str, SqlLedger] = {}
_lock = threading.Lock()


def _open(url: str) -> SqlLedger:
    with _lock:
        ledger = _ledgers.get(url)
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
            _ledgers[url] = ledger
        return ledger


def _forget(url: str) -> None:
    with _lock:
        ledger = _ledgers.pop(url, None)
    if ledger is not None:
        try:
            ledger.close()
        except Exception as exc:  # closing a broken pool is best effort
            log.debug("Closing the ledger %s: %s", redacted_url(url), exc)


async def read_ledger(url: str, read: Callable[[SqlLedger], T]) -> T:
    """``read(ledger)`` in a worker thread; raises LedgerUnavailable (or LedgerError) when it cannot be done."""

    def run() -> T:
        try:
            return read(_open(url))
        except LedgerUnavailable:
            _forget(url)
            raise
        except LedgerError:
            raise
        except (OSError, ValueError) as exc:  # e.g. a SQLite path that cannot be opened, a malformed URL
            _forget(url)
            raise LedgerUnavailable(f"cannot open the ledger {redacted_url(url)}: {exc}") from exc

    return await asyncio.to_thread(run)


def close_all() -> None:
    """Close every ledger the operator opened (at shutdown)."""
    with _lock:
        urls = list(_ledgers)
    for url in urls:
        _forget(url)
