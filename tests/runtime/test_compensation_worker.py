"""The compensation worker as on-call meets it: a dry run, an approved plan executed once, and every way it refuses
to execute (a changed plan, a missing compensator, another worker's lease); on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tourniquet.domain.compensation import PlanError, Selector
from tourniquet.runtime import Action, CompensationRequest, CompensationWorker, Irreversible, args_digest
from tourniquet.runtime.compensate import ExitCode, LeaseUnavailable, PlanChanged, gather_plan, main
from tourniquet.runtime.ledger import SqlLedger, canonical_json

AGENT = "refund-agent"
INCIDENT = "support/dup-refunds"
T0 = datetime(2026, 11, 21, 3, 0, tzinfo=UTC)
BUNDLE = {
    "model": {"provider": "openai", "name": "gpt-5", "version": "2026-08-06"},
    "prompt": {"template": "You are the refund assistant."},
    "tools": [
        {"name": "issue_refund", "compensation": {"type": "reversal", "tool": "reverse_refund"}},
        {"name": "reverse_refund"},
        {"name": "send_email", "compensation": {"type": "mitigation", "steps": ["Send a correction"]}},
        {"name": "close_ticket", "compensation": {"type": "none", "reason": "tickets reopen themselves"}},
    ],
}


def record(ledger: SqlLedger, key: str, minute: float, order: str, tool: str = "issue_refund") -> None:
    args = {"order_id": order, "ticket": key}
    ledger.record(
        Action(
            idempotency_key=key,
            agent=AGENT,
            tool=tool,
            args_digest=args_digest(tool, args),
            args_json=canonical_json(args),
            subjects=(f"order:{order}",),
            time=T0 + timedelta(minutes=minute),
        )
    )


@pytest.fixture
def ledger(any_ledger: SqlLedger) -> SqlLedger:
    # In the window [T0, T0+10m): o1 refunded twice (k2 duplicates k1), o2 three times (k4, k5), o3 once,
    # o0 once before the window and again inside (k6); an email and a ticket closure; a duplicate after.
    record(any_ledger, "k0", -5, "o0")
    for key, minute, order in [("k1", 1, "o1"), ("k2", 2, "o1"), ("k3", 3, "o2"), ("k4", 4, "o2"), ("k5", 5, "o2"),
                               ("k6", 6, "o0"), ("k7", 7, "o3")]:
        record(any_ledger, key, minute, order)
    record(any_ledger, "m1", 8, "o1", tool="send_email")
    record(any_ledger, "m2", 8.5, "o1", tool="send_email")
    record(any_ledger, "n1", 9, "o1", tool="close_ticket")
    record(any_ledger, "n2", 9.5, "o1", tool="close_ticket")
    record(any_ledger, "late", 12, "o3")
    return any_ledger


def request(**selector: Any) -> CompensationRequest:
    chosen = Selector(start=T0, end=T0 + timedelta(minutes=10), **selector)
    return CompensationRequest.from_bundles(INCIDENT, {AGENT: BUNDLE}, chosen)


class Reverser:
    """A compensator that counts its calls and can fail the first `fail` calls of some keys."""

    def __init__(self, fail: dict[str, int] | None = None, irreversible: set[str] | None = None) -> None:
        self.calls: list[str] = []
        self.fail = dict(fail or {})
        self.irreversible = irreversible or set()

    def __call__(self, action: Action) -> None:
        self.calls.append(action.idempotency_key)
        if action.idempotency_key in self.irreversible:
            raise Irreversible("the refund has settled: a chargeback is needed")
        if self.fail.get(action.idempotency_key, 0) > 0:
            self.fail[action.idempotency_key] -= 1
            raise ConnectionError("payments API 503")


def worker(ledger: SqlLedger, req: CompensationRequest, reverser: Reverser, **options: Any) -> CompensationWorker:
    plan, _ = gather_plan(ledger, req)
    options.setdefault("approved_hash", plan.hash)
    return CompensationWorker(ledger, req, compensators={"issue_refund": reverser}, sleep=lambda s: None, **options)


def test_an_approved_duplicates_only_plan_reverses_each_duplicate_once(ledger: SqlLedger) -> None:
    reverser = Reverser()
    plan, outcome = worker(ledger, request(duplicates_only=True), reverser).run()

    assert sorted(reverser.calls) == ["k2", "k4", "k5", "k6"]
    assert [i.idempotency_key for i in plan.items] == ["k2", "k4", "k5", "k6", "m2", "n2"]
    assert (outcome.planned, outcome.done, outcome.irreversible, outcome.skipped, outcome.failed) == (6, 4, 1, 1, 0)
    state = ledger.compensation_state(INCIDENT)
    assert state["m2"].detail == "mitigate by hand: Send a correction"
    assert state["n2"].detail == "tickets reopen themselves"

    again = Reverser()
    _, outcome = worker(ledger, request(duplicates_only=True), again).run()
    assert again.calls == [] and outcome.done == 4  # nothing is compensated twice
    assert ledger.lease_holder(INCIDENT) is None  # released


def test_a_failing_compensation_is_retried_then_reported_and_a_later_run_finishes_it(ledger: SqlLedger) -> None:
    flaky = Reverser(fail={"k2": 5, "k4": 1}, irreversible={"k5"})
    _, outcome = worker(ledger, request(duplicates_only=True, tools=("issue_refund",)), flaky, attempts=3).run()

    assert flaky.calls.count("k2") == 3 and flaky.calls.count("k4") == 2
    assert (outcome.done, outcome.failed, outcome.irreversible) == (2, 1, 1)
    assert outcome.failures == {"k2": "ConnectionError: payments API 503"}
    assert ledger.compensation_state(INCIDENT)["k5"].detail == "the refund has settled: a chargeback is needed"

    _, outcome = worker(ledger, request(duplicates_only=True, tools=("issue_refund",)), flaky, attempts=3).run()
    assert (outcome.done, outcome.failed) == (3, 0)
    assert flaky.calls.count("k2") == 6 and flaky.calls.count("k5") == 1  # two more failures, then done


def test_a_plan_that_changed_since_approval_executes_nothing(ledger: SqlLedger) -> None:
    req = request(duplicates_only=True)
    approved, _ = gather_plan(ledger, req)
    record(ledger, "k8", 9.9, "o3")  # a late-recorded duplicate lands in the window
    reverser = Reverser()

    with pytest.raises(PlanChanged, match="the plan changed since it was approved"):
        worker(ledger, req, reverser, approved_hash=approved.hash).run()
    assert reverser.calls == [] and ledger.compensation_state(INCIDENT) == {}


def test_a_plan_without_a_registered_compensator_executes_nothing(ledger: SqlLedger) -> None:
    req = request(duplicates_only=True)
    plan, _ = gather_plan(ledger, req)
    bare = CompensationWorker(ledger, req, approved_hash=plan.hash, compensators={})

    with pytest.raises(PlanError, match=r"no compensator is registered for issue_refund: register one with"):
        bare.run()
    assert ledger.compensation_state(INCIDENT) == {}


def test_a_second_worker_waits_for_the_lease_and_gives_up_while_the_first_holds_it(ledger: SqlLedger) -> None:
    assert ledger.acquire_lease(INCIDENT, "the-first-worker", timedelta(minutes=5))
    reverser = Reverser()

    with pytest.raises(LeaseUnavailable, match="another worker \\(the-first-worker\\) holds the compensation lease"):
        worker(ledger, request(duplicates_only=True), reverser, lease_wait_seconds=0.2).run()
    assert reverser.calls == []


def test_a_worker_that_lost_its_lease_stops_before_the_next_call(ledger: SqlLedger) -> None:
    stolen: list[str] = []

    def steal_after_first(action: Action) -> None:
        stolen.append(action.idempotency_key)
        ledger.renew_lease(INCIDENT, w.worker, timedelta(seconds=-60))  # expire our lease…
        assert ledger.acquire_lease(INCIDENT, "usurper", timedelta(minutes=5))  # …and someone takes it

    req = request(duplicates_only=True, tools=("issue_refund",))
    plan, _ = gather_plan(ledger, req)
    w = CompensationWorker(ledger, req, approved_hash=plan.hash, compensators={"issue_refund": steal_after_first},
                           batch_size=1, lease_seconds=0.6)

    with pytest.raises(LeaseUnavailable, match="stopped compensating incident"):
        w.run()
    assert stolen == ["k2"]


def test_the_command_is_a_dry_run_unless_it_names_the_plan(ledger: SqlLedger, ledger_target: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    req = tmp_path / "request.json"
    req.write_text(request(duplicates_only=True).to_json())
    args = ["--ledger", ledger_target, "--request", str(req), "--compensators", "json"]

    assert main(args, environ={}) == ExitCode.OK
    dry = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert dry["dryRun"] is True
    assert (dry["plan"]["planned"], dry["plan"]["irreversible"], dry["plan"]["skipped"]) == (4, 1, 1)
    assert ledger.compensation_state(INCIDENT) == {}

    assert main([*args, "--approve", "0" * 64], environ={}) == ExitCode.PLAN_CHANGED
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["executed"] is False
    assert main([*args, "--approve", dry["plan"]["hash"]], environ={}) == ExitCode.INVALID  # no compensator
    assert "no compensator is registered for issue_refund" in capsys.readouterr().out
    assert main(["--ledger", ledger_target, "--request", "{not json"], environ={}) == ExitCode.INVALID
    assert ledger.compensation_state(INCIDENT) == {}
