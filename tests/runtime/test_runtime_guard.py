"""What an agent developer sees when containment reaches the guard: writes held back, tools refused."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tourniquet.runtime import (
    AlreadyDone,
    Denied,
    Guard,
    IdempotencyConflict,
    Shadowed,
    SqliteLedger,
    StaticControl,
    ToolRevoked,
)

AGENT = "refund-agent"
CALLS = "tourniquet_agent_tool_calls_total"


class Payments:
    """A fake side-effecting service that remembers what really happened."""

    def __init__(self) -> None:
        self.refunds: list[tuple[str, int]] = []

    def issue_refund(self, order_id: str, amount_cents: int) -> str:
        self.refunds.append((order_id, amount_cents))
        return f"refund-{len(self.refunds)}"

    def lookup_order(self, order_id: str) -> dict[str, Any]:
        return {"order_id": order_id, "status": "delivered"}


def since() -> datetime:
    return datetime.now(UTC) - timedelta(minutes=5)


def test_shadow_mode_holds_back_writes_and_records_them_while_reads_still_run(
    guard: Guard, control: StaticControl, ledger: SqliteLedger, sample: Callable[..., float]
) -> None:
    payments = Payments()
    control.set(mode="shadow")

    written = guard.call(
        "issue_refund", {"order_id": "A1", "amount_cents": 500}, payments.issue_refund, subjects=["customer:42"]
    )
    read = guard.call("lookup_order", {"order_id": "A1"}, payments.lookup_order)

    assert isinstance(written, Shadowed)
    assert "shadow mode" in written.message
    assert payments.refunds == []
    assert read == {"order_id": "A1", "status": "delivered"}
    shadowed = ledger.actions(AGENT, since(), outcomes=["shadowed"])
    assert [(a.tool, a.args, a.subjects) for a in shadowed] == [
        ("issue_refund", {"amount_cents": 500, "order_id": "A1"}, ("customer:42",))
    ]
    assert ledger.actions(AGENT, since()) == []  # nothing happened for real
    assert sample(CALLS, tool="issue_refund", outcome="shadowed") == 1
    assert sample(CALLS, tool="lookup_order", outcome="ok") == 1
    assert sample("tourniquet_agent_shadow_mode") == 1


def test_a_revoked_tool_raises_and_runs_again_once_unrevoked(
    guard: Guard, control: StaticControl, ledger: SqliteLedger, sample: Callable[..., float]
) -> None:
    payments = Payments()
    control.set(revoked_tools={"issue_refund"})

    with pytest.raises(ToolRevoked, match="tool issue_refund is revoked by incident containment"):
        guard.call("issue_refund", {"order_id": "A1", "amount_cents": 500}, payments.issue_refund)
    control.set(revoked_tools={"issue_refund", "lookup_order"})
    with pytest.raises(ToolRevoked):  # revocation covers read tools too
        guard.call("lookup_order", {"order_id": "A1"}, payments.lookup_order)
    assert payments.refunds == []
    assert sample(CALLS, tool="issue_refund", outcome="revoked") == 1
    assert sample("tourniquet_agent_tool_revoked", tool="issue_refund") == 1

    control.set(revoked_tools=set())
    assert guard.call("issue_refund", {"order_id": "A1", "amount_cents": 500}, payments.issue_refund) == "refund-1"
    assert payments.refunds == [("A1", 500)]
    assert [a.outcome for a in ledger.actions(AGENT, since())] == ["ok"]
    assert sample("tourniquet_agent_tool_revoked", tool="issue_refund") == 0


def test_a_redelivered_task_does_not_refund_twice(guard: Guard, ledger: SqliteLedger) -> None:
    payments = Payments()
    for _delivery in range(2):
        with guard.task("refund_request", task_id="ticket-7"):
            result = guard.call("issue_refund", {"order_id": "A1", "amount_cents": 500}, payments.issue_refund)

    assert isinstance(result, AlreadyDone)
    assert "was not repeated" in result.message
    assert payments.refunds == [("A1", 500)]
    assert ledger.count_by_tool(AGENT, since()) == {"issue_refund": 1}


def test_the_same_refund_in_two_tasks_is_two_actions(guard: Guard, ledger: SqliteLedger) -> None:
    payments = Payments()
    for ticket in ("ticket-1", "ticket-2"):
        guard.call("issue_refund", {"order_id": "A1", "amount_cents": 500}, payments.issue_refund, task_id=ticket)

    assert len(payments.refunds) == 2
    assert ledger.count_by_tool(AGENT, since()) == {"issue_refund": 2}


def test_a_failed_write_is_recorded_reraised_and_may_be_retried(
    guard: Guard, ledger: SqliteLedger, sample: Callable[..., float]
) -> None:
    attempts = []

    def flaky_refund(order_id: str, amount_cents: int) -> str:
        attempts.append(order_id)
        if len(attempts) == 1:
            raise TimeoutError("payments API timed out")
        return "refund-1"

    args = {"order_id": "A1", "amount_cents": 500}
    with pytest.raises(TimeoutError):
        guard.call("issue_refund", args, flaky_refund, task_id="ticket-9")
    [failed] = ledger.actions(AGENT, since(), outcomes=["error"])
    assert failed.result_summary == "TimeoutError: payments API timed out"

    assert guard.call("issue_refund", args, flaky_refund, task_id="ticket-9") == "refund-1"
    [done] = ledger.actions(AGENT, since(), outcomes=["ok", "error"])
    assert (done.outcome, done.attempts, done.result_summary) == ("ok", 2, "refund-1")
    assert sample(CALLS, tool="issue_refund", outcome="error") == 1
    assert sample(CALLS, tool="issue_refund", outcome="ok") == 1


def test_a_reused_key_with_other_arguments_is_refused_before_running(guard: Guard) -> None:
    payments = Payments()
    guard.call("issue_refund", {"order_id": "A1", "amount_cents": 500}, payments.issue_refund, idempotency_key="k-1")
    with pytest.raises(IdempotencyConflict, match="one key names one action"):
        guard.call(
            "issue_refund", {"order_id": "A1", "amount_cents": 9900}, payments.issue_refund, idempotency_key="k-1"
        )
    assert payments.refunds == [("A1", 500)]


def test_identical_calls_count_as_repeated(guard: Guard, sample: Callable[..., float]) -> None:
    payments = Payments()
    for _ in range(3):
        guard.call("lookup_order", {"order_id": "A1"}, payments.lookup_order)
    guard.call("lookup_order", {"order_id": "B2"}, payments.lookup_order)

    assert sample("tourniquet_agent_repeated_tool_calls_total", tool="lookup_order") == 2


def test_policy_denials_are_counted_and_explained(guard: Guard, sample: Callable[..., float]) -> None:
    denied = guard.deny("issue_refund", "amount above the 100 EUR limit")

    assert isinstance(denied, Denied)
    assert denied.message == "issue_refund was refused by policy: amount above the 100 EUR limit"
    assert sample("tourniquet_agent_policy_denials_total", tool="issue_refund") == 1
    assert sample(CALLS, tool="issue_refund", outcome="denied") == 1


def test_a_failing_task_is_counted_by_kind(guard: Guard, sample: Callable[..., float]) -> None:
    with pytest.raises(ValueError), guard.task("refund_request", task_id="ticket-1"):
        raise ValueError("the model returned no decision")

    assert sample("tourniquet_agent_task_failures_total", task="refund_request") == 1


def test_the_decorator_guards_sync_and_async_tools(guard: Guard, control: StaticControl, ledger: SqliteLedger) -> None:
    refunds: list[str] = []

    @guard.tool("issue_refund", subjects=lambda args: [f"order:{args['order_id']}"])
    def issue_refund(order_id: str, amount_cents: int = 100) -> str:
        refunds.append(order_id)
        return "done"

    @guard.tool()
    async def send_email(to: str, body: str) -> str:
        return "sent"

    assert issue_refund("A1") == "done"
    assert asyncio.run(send_email("a@example.com", body="hi")) == "sent"
    control.set(mode="shadow")
    assert isinstance(issue_refund("B2", amount_cents=300), Shadowed)
    assert isinstance(asyncio.run(send_email("a@example.com", body="hi")), Shadowed)

    assert refunds == ["A1"]
    recorded = {(a.tool, a.outcome): a for a in ledger.actions(AGENT, since(), outcomes=["ok", "shadowed"])}
    assert recorded["issue_refund", "ok"].args == {"order_id": "A1", "amount_cents": 100}
    assert recorded["issue_refund", "ok"].subjects == ("order:A1",)
    assert set(recorded) == {
        ("issue_refund", "ok"),
        ("send_email", "ok"),
        ("issue_refund", "shadowed"),
        ("send_email", "shadowed"),
    }


def test_an_undeclared_tool_is_treated_as_a_write(guard: Guard, control: StaticControl) -> None:
    control.set(mode="shadow")
    ran = []

    result = guard.call("delete_account", {"user": "42"}, lambda user: ran.append(user))

    assert isinstance(result, Shadowed)
    assert ran == []


def test_redaction_keeps_secrets_out_of_the_ledger_but_not_out_of_the_call(
    control: StaticControl, ledger: SqliteLedger
) -> None:
    guard = Guard(
        control,
        ledger,
        agent=AGENT,
        tools={"charge_card": "write"},
        redact=lambda tool, args: {**args, "card_number": "****"},
    )
    seen = []
    guard.call("charge_card", {"card_number": "4111111111111111", "amount_cents": 1}, lambda **a: seen.append(a))

    assert seen[0]["card_number"] == "4111111111111111"
    [action] = ledger.actions(AGENT, since())
    assert action.args == {"card_number": "****", "amount_cents": 1}
