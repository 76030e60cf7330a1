"""The undo's decisions and status (pure): when a Job is made, what each condition says, what the timeline gains."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from tourniquet.domain.blastradius import compute_blast_radius
from tourniquet.domain.compensation import Declaration, Selector, plan_compensation
from tourniquet.domain.undo import JobSeen, LedgerRead, Verdict, decide_compensation, undo_status

T0 = datetime(2026, 11, 21, 3, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 21, 4, 0, tzinfo=UTC)
DECLARED = {"refund-agent": {"issue_refund": Declaration(type="reversal", tool="reverse_refund")}}


@dataclass(frozen=True)
class Act:
    idempotency_key: str
    subjects: tuple[str, ...]
    time: datetime
    agent: str = "refund-agent"
    tool: str = "issue_refund"
    outcome: str = "ok"
    bundle_revision: int | None = 1


@dataclass(frozen=True)
class ToolCount:
    tool: str
    actions: int
    subjects: int
    amounts: dict[str, int]
    first: datetime | None = None
    last: datetime | None = None


@dataclass(frozen=True)
class AgentCount:
    tools: tuple[ToolCount, ...]
    subjects: int


def plan(n: int = 2):  # type: ignore[no-untyped-def]
    actions = [Act(f"k{i}", (f"order:o{i}",), T0 + timedelta(minutes=i)) for i in range(n)]
    return plan_compensation(Selector(start=T0, end=T0 + timedelta(minutes=10)), actions, DECLARED)


def read(n: int = 2, progress: dict[str, int] | None = None, end: datetime | None = T0 + timedelta(minutes=10)):  # type: ignore[no-untyped-def]
    counts = {"refund-agent": AgentCount((ToolCount("issue_refund", n, n, {"USD cents": 2500 * n}),), n)}
    blast = compute_blast_radius(T0, end, counts, DECLARED, window_source="spec.window.start")
    return LedgerRead(blast=blast, plan=plan(n), progress=progress or {})


HASH = plan().hash
STALE = "0" * 64


@pytest.mark.parametrize(
    ("compensate", "observed", "job", "verdict"),
    [
        (None, read(), None, Verdict.AWAITING_APPROVAL),
        (None, read(0), None, Verdict.NOTHING),
        ({"approved": True, "planHash": STALE}, read(), None, Verdict.PLAN_CHANGED),
        ({"approved": True, "planHash": HASH}, read(), None, Verdict.CREATE_JOB),
        ({"approved": True, "planHash": HASH}, read(), JobSeen("j", exists=False), Verdict.CREATE_JOB),
        ({"approved": True, "planHash": HASH}, read(), JobSeen("j", exists=True, active=1), Verdict.RUNNING),
        ({"approved": True, "planHash": HASH}, read(), JobSeen("j", True, failed_message="BackoffLimitExceeded"),
         Verdict.FAILED),
        # The ledger shows it all done: no Job made, even when none is there (deleted, or a restart).
        ({"approved": True, "planHash": HASH}, read(progress={"done": 2}), None, Verdict.COMPLETE),
        ({"approved": True, "planHash": HASH}, read(progress={"done": 1, "irreversible": 1}), None, Verdict.COMPLETE),
        ({"approved": True, "planHash": HASH}, read(progress={"done": 1, "failed": 1}), JobSeen("j", True),
         Verdict.RUNNING),
        ({"approved": True, "planHash": HASH}, LedgerRead(error="down", reason="Unreachable"), None, Verdict.NO_LEDGER),
        ({"approved": True, "planHash": HASH}, LedgerRead(plan_error="unknown tool x"), None, Verdict.INVALID),
        # Not approved (approved: false with a hash): nothing runs.
        ({"approved": False, "planHash": HASH}, read(), None, Verdict.AWAITING_APPROVAL),
    ],
)
def test_a_job_only_for_the_approved_current_plan_and_never_once_it_is_done(compensate, observed, job, verdict):  # type: ignore[no-untyped-def]
    assert decide_compensation("ns/dup", compensate, observed, job).verdict == verdict


def test_an_unreadable_ledger_keeps_the_last_complete_observation_and_asks_for_a_retry() -> None:
    first = undo_status({}, read(), decide_compensation("ns/dup", None, read(), None), None,
                        approved_hash=None, now=NOW, generation=1)
    status = {"blastRadius": first.blast_radius, "compensation": first.compensation, "conditions": first.conditions,
              "timeline": [{"event": e, "message": m} for e, m, _ in first.notes]}
    down = LedgerRead(error="cannot reach the ledger database", reason="Unreachable")
    later = undo_status(status, down, decide_compensation("ns/dup", None, down, None), None,
                        approved_hash=None, now=NOW + timedelta(minutes=1), generation=1)
    assert later.blast_radius == first.blast_radius and later.compensation == first.compensation
    assert later.retry and [n[0] for n in later.notes] == ["LedgerUnavailable"]
    unavailable = next(c for c in later.conditions if c["type"] == "LedgerUnavailable")
    assert (unavailable["status"], unavailable["reason"]) == ("True", "Unreachable")


def test_a_pass_over_an_unchanged_ledger_changes_nothing() -> None:
    first = undo_status({}, read(), decide_compensation("ns/dup", None, read(), None), None,
                        approved_hash=None, now=NOW, generation=1)
    assert [n[0] for n in first.notes] == ["BlastRadius", "CompensationPlanned"]
    status = {"blastRadius": first.blast_radius, "compensation": first.compensation, "conditions": first.conditions,
              "timeline": [{"event": e, "message": m} for e, m, _ in first.notes]}
    again = undo_status(status, read(), decide_compensation("ns/dup", None, read(), None), None,
                        approved_hash=None, now=NOW + timedelta(minutes=5), generation=1)
    assert (again.blast_radius, again.compensation, again.conditions) == (
        first.blast_radius, first.compensation, first.conditions
    )
    assert again.notes == []


def test_an_open_window_is_noted_once_and_again_when_it_closes() -> None:
    opened = read(end=None)
    first = undo_status({}, opened, decide_compensation("ns/dup", None, opened, None), None,
                        approved_hash=None, now=NOW, generation=1)
    assert [n[0] for n in first.notes] == ["BlastRadius"]  # no plan entry while the window still grows
    assert "still open" in first.notes[0][1]
    status = {"blastRadius": first.blast_radius, "compensation": first.compensation,
              "timeline": [{"event": e, "message": m} for e, m, _ in first.notes]}
    closed = undo_status(status, read(), decide_compensation("ns/dup", None, read(), None), None,
                         approved_hash=None, now=NOW, generation=1)
    assert [n[0] for n in closed.notes] == ["BlastRadius", "CompensationPlanned"]


def test_progress_is_the_ledgers_and_counted_once() -> None:
    approved = {"approved": True, "planHash": HASH}
    half = read(progress={"done": 1})
    job = JobSeen("dup-compensate-x", exists=True, active=1, created=True)
    running = undo_status({}, half, decide_compensation("ns/dup", approved, half, job), job,
                          approved_hash=HASH, now=NOW, generation=1)
    assert {k: running.compensation[k] for k in ("planned", "done", "pending", "job")} == {  # type: ignore[index]
        "planned": 2, "done": 1, "pending": 1, "job": "dup-compensate-x"
    }
    assert running.counted == {"done": 1}
    assert ("CompensationStarted", "Job dup-compensate-x runs plan " + HASH[:16] + "…", None) in running.notes
    status = {"compensation": running.compensation, "conditions": running.conditions, "timeline": []}
    done = read(progress={"done": 2})
    seen = JobSeen("dup-compensate-x", exists=True)
    complete = undo_status(status, done, decide_compensation("ns/dup", approved, done, seen), seen,
                           approved_hash=HASH, now=NOW, generation=1)
    assert complete.counted == {"done": 1}  # only what is new since the last status
    compensated = next(c for c in complete.conditions if c["type"] == "Compensated")
    assert (compensated["status"], compensated["reason"]) == ("True", "Complete")
