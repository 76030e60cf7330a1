"""The action ledger: one row per action, idempotent records, window queries, exactly-once compensation.

Every test on the `ledger` fixture runs on both backends, SQLite (a file) and PostgreSQL (a server the
suite starts); `reopen_ledger()` opens the same ledger again, as another process would.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tourniquet.runtime import (
    Action,
    IdempotencyConflict,
    LedgerError,
    SqliteLedger,
    UnknownAction,
    args_digest,
)
from tourniquet.runtime.ledger import SCHEMA_VERSION, SqlLedger, canonical_json

AGENT = "refund-agent"
T0 = datetime(2026, 11, 21, 3, 0, tzinfo=UTC)


def action(
    key: str,
    *,
    tool: str = "issue_refund",
    args: dict[str, object] | None = None,
    minute: int = 0,
    outcome: str = "ok",
    subjects: tuple[str, ...] = (),
    agent: str = AGENT,
) -> Action:
    args = args if args is not None else {"order_id": key, "amount_cents": 500}
    return Action(
        idempotency_key=key,
        agent=agent,
        tool=tool,
        args_digest=args_digest(tool, args),
        args_json=canonical_json(args),
        subjects=subjects,
        time=T0 + timedelta(minutes=minute),
        outcome=outcome,
    )


@pytest.fixture
def ledger(any_ledger: SqlLedger) -> SqlLedger:
    return any_ledger


def rows(ledger: SqlLedger) -> int:
    with ledger._transaction(write=False) as cur:
        cur.execute("SELECT COUNT(*) FROM tourniquet_actions")
        count: int = cur.fetchone()[0]
    return count


def test_recording_the_same_key_twice_keeps_one_row_and_returns_the_first(ledger: SqlLedger) -> None:
    first = ledger.record(action("k1", minute=1))
    again = ledger.record(action("k1", minute=7))

    assert again == first
    assert again.time == T0 + timedelta(minutes=1)
    assert rows(ledger) == 1


def test_the_same_key_with_other_arguments_is_a_conflict(ledger: SqlLedger) -> None:
    ledger.record(action("k1", args={"order_id": "A1", "amount_cents": 500}))

    with pytest.raises(IdempotencyConflict, match="'k1' already names refund-agent/issue_refund"):
        ledger.record(action("k1", args={"order_id": "A1", "amount_cents": 50000}))
    assert ledger.get("k1").args == {"order_id": "A1", "amount_cents": 500}  # type: ignore[union-attr]


def test_an_error_or_shadowed_record_is_superseded_by_a_later_attempt(ledger: SqlLedger) -> None:
    ledger.record(action("k1", outcome="shadowed", minute=1))
    ledger.record(action("k1", outcome="error", minute=2))
    done = ledger.record(action("k1", outcome="ok", minute=3))
    final = ledger.record(action("k1", outcome="error", minute=4))  # ok is final

    assert (done.outcome, done.attempts, done.time) == ("ok", 3, T0 + timedelta(minutes=3))
    assert final == done == ledger.get("k1")
    assert rows(ledger) == 1


def test_window_queries_give_the_blast_radius(ledger: SqlLedger) -> None:
    ledger.record(action("before", minute=-1, subjects=("customer:1",)))
    ledger.record(action("r1", minute=0, subjects=("customer:2", "order:9")))
    ledger.record(action("r2", minute=5, subjects=("customer:2",)))
    ledger.record(action("e1", minute=6, tool="send_email", args={"to": "c3"}, subjects=("customer:3",)))
    ledger.record(action("failed", minute=7, outcome="error", subjects=("customer:4",)))
    ledger.record(action("shadow", minute=8, outcome="shadowed", subjects=("customer:5",)))
    ledger.record(action("other-agent", minute=8, agent="pricing-agent"))
    ledger.record(action("after", minute=10))

    start, end = T0, T0 + timedelta(minutes=10)
    assert [a.idempotency_key for a in ledger.actions(AGENT, start, end)] == ["r1", "r2", "e1"]
    assert ledger.actions(AGENT, start, end)[0].subjects == ("customer:2", "order:9")
    assert ledger.count_by_tool(AGENT, start, end) == {"issue_refund": 2, "send_email": 1}
    assert ledger.count_by_tool(AGENT, start, end, tools=["issue_refund"], outcomes=["ok", "error"]) == {
        "issue_refund": 3
    }
    assert ledger.subjects(AGENT, start, end) == ["customer:2", "customer:3", "order:9"]
    assert ledger.subjects(AGENT, start, end, outcomes=["shadowed"]) == ["customer:5"]
    assert [a.idempotency_key for a in ledger.actions(AGENT, start)][-1] == "after"  # no end: up to now


def test_times_must_be_timezone_aware(ledger: SqlLedger) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ledger.actions(AGENT, datetime(2026, 11, 21, 3, 0))


def test_compensation_is_claimed_exactly_once_by_eight_racing_workers(
    ledger: SqlLedger, reopen_ledger: Callable[[], SqlLedger]
) -> None:
    for i in range(20):
        ledger.record(action(f"k{i}"))
    wins: list[tuple[str, int]] = []
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        with reopen_ledger() as own:  # its own connections, as another process would have
            barrier.wait()
            for i in range(20):
                if own.claim_compensation(f"k{i}", "incident-1", claimer=f"worker-{n}"):
                    wins.append((f"k{i}", n))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(key for key, _ in wins) == sorted(f"k{i}" for i in range(20))
    state = ledger.compensation_state("incident-1")
    assert {k: (r.state, r.attempts) for k, r in state.items()} == {f"k{i}": ("claimed", 1) for i in range(20)}
    assert ledger.claim_compensation("k0", "incident-2")  # another incident is another claim


def test_a_failed_compensation_may_be_claimed_again_a_done_one_never(ledger: SqlLedger) -> None:
    ledger.record(action("k1"))
    assert ledger.claim_compensation("k1", "incident-1")
    ledger.complete_compensation("k1", "incident-1", "failed", detail="payments API 503")
    assert ledger.claim_compensation("k1", "incident-1")
    ledger.complete_compensation("k1", "incident-1", "done")
    ledger.complete_compensation("k1", "incident-1", "done")  # a retried completion is a no-op

    assert not ledger.claim_compensation("k1", "incident-1")
    record = ledger.compensation_state("incident-1")["k1"]
    assert (record.state, record.attempts, record.detail) == ("done", 2, None)
    with pytest.raises(LedgerError, match="already done"):
        ledger.complete_compensation("k1", "incident-1", "irreversible")


def test_a_stale_claim_can_be_taken_over(ledger: SqlLedger) -> None:
    ledger.record(action("k1"))
    assert ledger.claim_compensation("k1", "incident-1", claimer="crashed")

    assert not ledger.claim_compensation("k1", "incident-1", reclaim_after=timedelta(hours=1))
    assert ledger.claim_compensation("k1", "incident-1", claimer="rescuer", reclaim_after=timedelta(0))
    assert ledger.compensation_state("incident-1")["k1"].claimed_by == "rescuer"


def test_compensating_an_unknown_action_is_refused(ledger: SqlLedger) -> None:
    with pytest.raises(UnknownAction, match="no action with idempotency key 'nope'"):
        ledger.claim_compensation("nope", "incident-1")
    with pytest.raises(LedgerError, match="never claimed"):
        ledger.complete_compensation("nope", "incident-1", "done")


def test_the_schema_is_versioned_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with SqliteLedger(path) as ledger:
        ledger.record(action("k1"))
        assert ledger.schema_version() == SCHEMA_VERSION
    with SqliteLedger(path) as reopened:  # reopening migrates nothing and keeps the data
        assert reopened.get("k1") is not None
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO tourniquet_ledger_schema (version) VALUES (?)", (SCHEMA_VERSION + 1,))
    with pytest.raises(LedgerError, match="upgrade tourniquet"):
        SqliteLedger(path)


def test_the_ledger_uses_wal_so_readers_do_not_block_the_agent(tmp_path: Path) -> None:
    with SqliteLedger(tmp_path / "ledger.db") as ledger, sqlite3.connect(ledger.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_closing_the_ledger_during_a_read_in_another_thread_lets_the_read_finish(tmp_path: Path) -> None:
    """An operator stopping while an undo's ledger read still runs in a worker thread: the read is not cut under
    its statement (that can crash the process), its connection is closed when it ends, and no read starts after."""
    ledger = SqliteLedger(tmp_path / "ledger.db")
    ledger.record(action("k1"))
    inside, closed = threading.Event(), threading.Event()
    seen: list[object] = []

    def read() -> None:
        with ledger._transaction(write=False) as cur:
            inside.set()
            closed.wait(10)
            seen.append(cur.execute("SELECT count(*) FROM tourniquet_actions").fetchone()[0])

    reader = threading.Thread(target=read)
    reader.start()
    assert inside.wait(10)
    ledger.close()
    closed.set()
    reader.join(10)
    assert seen == [1]
    with pytest.raises(LedgerError, match="closed"):
        ledger.get("k1")
