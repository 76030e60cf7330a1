"""The shared ledger on a real PostgreSQL: many agent processes writing at once, and a database that is not there."""

from __future__ import annotations

import multiprocessing
import signal
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tourniquet.runtime import Action, LedgerUnavailable, args_digest, open_ledger
from tourniquet.runtime.ledger import SCHEMA_VERSION, canonical_json
from tourniquet.runtime.postgres import PostgresLedger

AGENT = "refund-agent"
T0 = datetime(2026, 11, 21, 3, 0, tzinfo=UTC)
PROCESSES = 4
OWN = 150
SHARED = 100


def _action(key: str, n: int) -> Action:
    args = {"order_id": key, "amount_cents": 100 + n}
    return Action(
        idempotency_key=key,
        agent=AGENT,
        tool="issue_refund",
        args_digest=args_digest("issue_refund", args),
        args_json=canonical_json(args),
        subjects=(f"order:{key}", f"customer:{n % 7}"),
        time=T0 + timedelta(seconds=n),
        amount=100 + n,
        amount_unit="USD cents",
    )


def _agent_process(url: str, worker: int, start: Any, results: Any) -> None:
    """One agent replica: opens the (perhaps not yet migrated) ledger, records its own actions and the shared
    ones (a redelivered task: the same key and arguments), then races the others to claim compensations."""
    start.wait(30)
    with open_ledger(url, max_size=2) as ledger:
        for i in range(OWN):
            ledger.record(_action(f"w{worker}-{i}", i))
        for i in range(SHARED):
            ledger.record(_action(f"shared-{i}", i))
        won = [f"shared-{i}" for i in range(SHARED) if ledger.claim_compensation(f"shared-{i}", "support/inc")]
    results.put((worker, won))


def test_several_agent_processes_write_one_ledger_at_once(postgres_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    processes = [ctx.Process(target=_agent_process, args=(postgres_url, n, start, results)) for n in range(PROCESSES)]
    for process in processes:
        process.start()
    start.set()
    won = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(30)
        assert process.exitcode == 0

    claimed = sorted(key for keys in won.values() for key in keys)
    assert claimed == sorted(f"shared-{i}" for i in range(SHARED))  # each claimed by exactly one process
    with open_ledger(postgres_url) as ledger:
        assert ledger.schema_version() == SCHEMA_VERSION  # migrated once, by whichever came first
        everything = ledger.actions(AGENT, T0)
        assert len(everything) == PROCESSES * OWN + SHARED
        assert all(a.attempts == 1 for a in everything)
        radius = ledger.blast_radius(AGENT, T0)
        assert (radius.actions, radius.subjects) == (PROCESSES * OWN + SHARED, PROCESSES * OWN + SHARED + 7)
        assert radius.tools[0].amounts == {"USD cents": sum(a.amount or 0 for a in everything)}


def test_an_unreachable_database_is_ledger_unavailable_and_the_password_stays_out_of_the_message() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://agent:hunter2@127.0.0.1:{port}/ledger"

    with pytest.raises(LedgerUnavailable) as raised:
        PostgresLedger(url, timeout=1, connect_timeout=1)

    message = str(raised.value)
    assert f"cannot reach the ledger database postgresql://agent:***@127.0.0.1:{port}/ledger within 1s" in message
    assert "hunter2" not in message


def test_a_ledger_whose_server_went_away_raises_ledger_unavailable(postgres: Any) -> None:
    """Not the session's server: a second one, stopped under the ledger's feet (a fast shutdown)."""
    from tourniquet.sandbox.postgres import PostgresServer

    with PostgresServer(durable=False) as server:
        ledger = PostgresLedger(server.url, timeout=2, connect_timeout=1)
        ledger.record(_action("k1", 1))
        assert server.process is not None
        server.process.send_signal(signal.SIGINT)
        server.process.wait(30)
        with pytest.raises(LedgerUnavailable, match=r"is unavailable|within 2s"):
            ledger.get("k1")
        ledger.close()
