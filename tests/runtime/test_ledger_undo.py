"""What the undo reads from the ledger: amounts and subjects, the blast radius, decision traces and their
retention, the compensation lease and batch claims; each test on SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tourniquet.runtime import Action, LedgerError, SqliteLedger, Trace, UnknownAction, args_digest
from tourniquet.runtime.ledger import MIGRATIONS, SCHEMA_VERSION, SQLITE, SqlLedger, canonical_json

AGENT = "refund-agent"
T0 = datetime(2026, 11, 21, 3, 0, tzinfo=UTC)
START, END = T0, T0 + timedelta(minutes=10)
INCIDENT = "support/dup-refunds"


def act(
    key: str,
    minute: float,
    *,
    tool: str = "issue_refund",
    subjects: tuple[str, ...] = (),
    outcome: str = "ok",
    amount: int | None = None,
    unit: str | None = "USD cents",
    agent: str = AGENT,
    args: dict[str, object] | None = None,
) -> Action:
    args = args if args is not None else {"ticket": key}
    return Action(
        idempotency_key=key,
        agent=agent,
        tool=tool,
        args_digest=args_digest(tool, args),
        args_json=canonical_json(args),
        subjects=subjects,
        time=T0 + timedelta(minutes=minute),
        outcome=outcome,
        amount=amount,
        amount_unit=unit if amount is not None else None,
        task_id=f"task-{key}",
        bundle_revision=7,
        bundle_hash="ab" * 32,
    )


@pytest.fixture
def ledger(any_ledger: SqlLedger) -> SqlLedger:
    return any_ledger


def test_an_action_keeps_what_the_undo_needs(ledger: SqlLedger) -> None:
    stored = ledger.record(act("k1", 1, subjects=("order:1", "customer:9"), amount=2500))

    assert ledger.get("k1") == stored
    assert (stored.task_id, stored.bundle_revision) == ("task-k1", 7)
    assert (stored.amount, stored.amount_unit) == (2500, "USD cents")
    assert stored.primary_subject == "order:1"


def test_the_blast_radius_counts_actions_subjects_and_amounts_per_tool_in_the_window(ledger: SqlLedger) -> None:
    ledger.record(act("before", -1, subjects=("order:0", "customer:1"), amount=100))
    ledger.record(act("r1", 0, subjects=("order:1", "customer:1"), amount=2500))
    ledger.record(act("r2", 3, subjects=("order:1", "customer:1"), amount=2500))  # a duplicate refund
    ledger.record(act("r3", 4, subjects=("order:2", "customer:2"), amount=1000))
    ledger.record(act("eur", 4.5, subjects=("order:3", "customer:2"), amount=900, unit="EUR cents"))
    ledger.record(act("e1", 5, tool="send_email", subjects=("customer:3",)))
    ledger.record(act("failed", 6, subjects=("order:4",), outcome="error", amount=50))
    ledger.record(act("shadow", 7, subjects=("order:5",), outcome="shadowed", amount=50))
    ledger.record(act("other-agent", 8, agent="pricing-agent", subjects=("order:6",), amount=50))
    ledger.record(act("after", 10, subjects=("order:7",), amount=50))

    radius = ledger.blast_radius(AGENT, START, END)

    assert [(t.tool, t.actions, t.subjects, t.amounts) for t in radius.tools] == [
        ("issue_refund", 4, 5, {"EUR cents": 900, "USD cents": 6000}),
        ("send_email", 1, 1, {}),
    ]
    assert (radius.actions, radius.subjects) == (5, 6)
    assert (radius.tools[0].first, radius.tools[0].last) == (T0, T0 + timedelta(minutes=4.5))
    assert ledger.blast_radius(AGENT, START, END, tools=["send_email"]).actions == 1
    assert ledger.subject_actions(AGENT, START, END) == [
        ("customer:1", "issue_refund", 2),
        ("customer:2", "issue_refund", 2),
        ("customer:3", "send_email", 1),
        ("order:1", "issue_refund", 2),
        ("order:2", "issue_refund", 1),
        ("order:3", "issue_refund", 1),
    ]
    assert ledger.blast_radius(AGENT, END, END + timedelta(minutes=1)).subjects == 1


def test_a_retried_action_counts_in_the_window_where_it_succeeded(ledger: SqlLedger) -> None:
    ledger.record(act("k1", -5, subjects=("order:1",), outcome="error", amount=700))
    ledger.record(act("k1", 2, subjects=("order:1",), outcome="ok", amount=700))

    assert ledger.blast_radius(AGENT, START, END).tools[0].subjects == 1
    assert ledger.subjects(AGENT, START, END) == ["order:1"]
    assert ledger.blast_radius(AGENT, START - timedelta(minutes=10), START).actions == 0


def test_earlier_primary_subjects_reach_before_the_window(ledger: SqlLedger) -> None:
    ledger.record(act("old", -60, subjects=("order:1", "customer:1")))
    ledger.record(act("old-email", -60, tool="send_email", subjects=("order:2",)))
    ledger.record(act("old-error", -50, subjects=("order:3",), outcome="error"))
    ledger.record(act("again", 1, subjects=("order:1", "customer:1")))
    ledger.record(act("new", 2, subjects=("order:2", "customer:1")))  # order:2 had only an email before
    ledger.record(act("retry", 3, subjects=("order:3",)))  # order:3 had only a failed refund before
    ledger.record(act("by-customer", 4, subjects=("order:4", "customer:1")))  # customer:1 is not primary here

    assert ledger.earlier_primary_subjects(AGENT, START, END) == {("issue_refund", "order:1")}


def test_a_trace_is_kept_with_its_action_and_replaced_by_a_later_attempt(ledger: SqlLedger) -> None:
    first = Trace("k1", recorded_at=T0, task_name="refund_request", model_input='{"value":"first"}')
    ledger.record(act("k1", 0, outcome="error"), first)
    assert ledger.trace("k1") == first

    second = Trace("k1", recorded_at=T0 + timedelta(minutes=1), task_name="refund_request",
                   model_output='{"ref":"s3://traces/k1"}')
    ledger.record(act("k1", 1), second)
    ledger.record(act("k1", 2), Trace("k1", model_input='{"value":"ignored: ok is final"}'))

    assert ledger.trace("k1") == second
    assert second.parts() == {"modelOutput": {"ref": "s3://traces/k1"}}
    assert ledger.trace("nope") is None
    with pytest.raises(ValueError, match="the trace is of 'k2', not of the action 'k1'"):
        ledger.record(act("k1", 3), Trace("k2"))


def test_traces_past_the_retention_are_pruned_and_their_actions_stay(ledger: SqlLedger) -> None:
    for days in (40, 31, 29, 1):
        key = f"{days}d"
        ledger.record(act(key, 0), Trace(key, recorded_at=T0 - timedelta(days=days), model_input='{"value":1}'))

    assert ledger.prune_traces(T0 - timedelta(days=30)) == 2

    assert [k for k in ("40d", "31d", "29d", "1d") if ledger.trace(k)] == ["29d", "1d"]
    assert all(ledger.get(k) is not None for k in ("40d", "31d", "29d", "1d"))


def test_the_compensation_lease_has_one_holder_until_it_expires(ledger: SqlLedger) -> None:
    minute = timedelta(minutes=1)
    assert ledger.acquire_lease(INCIDENT, "worker-a", minute)
    assert not ledger.acquire_lease(INCIDENT, "worker-b", minute)
    assert ledger.acquire_lease(INCIDENT, "worker-a", minute)  # its own: renewed
    assert ledger.renew_lease(INCIDENT, "worker-a", -minute)  # now expired
    assert ledger.acquire_lease(INCIDENT, "worker-b", minute)
    assert not ledger.renew_lease(INCIDENT, "worker-a", minute)  # lost
    holder = ledger.lease_holder(INCIDENT)
    assert holder is not None and holder[0] == "worker-b"
    ledger.release_lease(INCIDENT, "worker-a")  # not its lease: nothing happens
    assert ledger.acquire_lease("support/another-incident", "worker-a", minute)
    ledger.release_lease(INCIDENT, "worker-b")
    assert ledger.lease_holder(INCIDENT) is None


def test_a_lease_holder_takes_over_what_a_dead_worker_claimed_and_never_what_is_done(ledger: SqlLedger) -> None:
    for key in ("k1", "k2", "k3"):
        ledger.record(act(key, 0))
    assert ledger.claim_batch(INCIDENT, ["k1", "k2"], "dead") == {"k1": 1, "k2": 1}
    ledger.complete_batch(INCIDENT, "dead", [("k1", "done", None)])

    assert ledger.claim_batch(INCIDENT, ["k1", "k2", "k3"], "next") == {"k2": 2, "k3": 1}
    with pytest.raises(LedgerError, match="no longer claimed by dead"):
        ledger.complete_batch(INCIDENT, "dead", [("k2", "done", None)])
    ledger.complete_batch(INCIDENT, "next", [("k2", "done", None), ("k3", "failed", "payments API 503")])

    assert ledger.claim_batch(INCIDENT, ["k1", "k2", "k3"], "third") == {"k3": 2}  # a failure is retried
    assert ledger.compensation_counts(INCIDENT) == {"claimed": 1, "done": 2}
    assert ledger.claim_batch("support/other", ["k1"], "third") == {"k1": 1}  # another incident, another claim
    with pytest.raises(UnknownAction, match="nothing was claimed"):
        ledger.claim_batch(INCIDENT, ["k1", "nope"], "third")


def test_a_ledger_of_the_previous_schema_is_migrated_in_place(tmp_path: Path) -> None:
    """A SQLite ledger written by the release before the undo (schema 1) keeps its actions and answers the
    undo's queries once opened."""
    path = tmp_path / "ledger.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE tourniquet_ledger_schema (version INTEGER NOT NULL)")
        for statement in MIGRATIONS[0]:
            conn.execute(statement.format(ts=SQLITE.timestamp_type))
        conn.execute("INSERT INTO tourniquet_ledger_schema (version) VALUES (1)")
        conn.execute(
            "INSERT INTO tourniquet_actions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("k1", AGENT, "issue_refund", "d" * 64, "{}", SQLITE.to_db_time(T0), "ok", None, 1),
        )
        conn.execute("INSERT INTO tourniquet_action_subjects VALUES ('k1', 0, 'order:1')")

    with SqliteLedger(path) as ledger:
        assert ledger.schema_version() == SCHEMA_VERSION
        migrated = ledger.get("k1")
        assert migrated is not None and migrated.subjects == ("order:1",) and migrated.amount is None
        assert ledger.blast_radius(AGENT, START, END).subjects == 1
        assert [a.idempotency_key for a in ledger.actions(AGENT, START, END)] == ["k1"]
