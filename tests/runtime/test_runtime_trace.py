"""Decision traces as an agent developer writes them and a postmortem reads them; the runtime's undo settings."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.runtime.test_runtime_worker import write_bundle

from tourniquet.domain.bundles import bundle_sha256
from tourniquet.models import Bundle
from tourniquet.runtime import (
    ConfigurationError,
    Guard,
    Runtime,
    Shadowed,
    SqliteLedger,
    StaticControl,
    Trace,
    current_idempotency_key,
)
from tourniquet.runtime.trace import TraceRetention, trace_part

AGENT = "refund-agent"


def since() -> datetime:
    return datetime.now(UTC) - timedelta(minutes=5)


def test_a_trace_part_is_a_redacted_copy_cut_to_its_limit_or_a_reference() -> None:
    messages = [{"role": "user", "content": "refund A1; my api_key=sk-live-abcdefghijklmnop1234"}]
    stored = json.loads(trace_part(messages))
    assert stored["truncated"] is False
    assert "sk-live" not in json.dumps(stored) and "[REDACTED]" in json.dumps(stored)

    long = json.loads(trace_part({"document": "x" * 5000}, limit=1000))
    assert long["truncated"] is True and long["bytes"] > 5000 and len(long["value"].encode()) <= 1000

    assert json.loads(trace_part(ref="s3://traces/ticket-812.json")) == {"ref": "s3://traces/ticket-812.json"}
    with pytest.raises(ValueError, match="not both"):
        trace_part("text", ref="s3://x")


def test_each_action_in_a_task_carries_the_task_s_trace(ledger: SqliteLedger) -> None:
    guard = Guard(StaticControl(), ledger, agent=AGENT, tools={"issue_refund": "write"}, bundle_revision=7,
                  bundle_hash="ab" * 32)
    keys: list[str | None] = []
    refund = guard.tool(
        "issue_refund",
        subjects=lambda a: [f"order:{a['order_id']}"],
        amount=lambda a: a["amount_cents"],
        amount_unit="USD cents",
    )(lambda order_id, amount_cents: keys.append(current_idempotency_key()))

    with guard.task("refund_request", task_id="ticket-812") as task:
        task.model_input({"user": "please refund order A1", "password": "hunter2"})
        task.retrieved_context(ref="s3://kb/orders/A1.json")
        task.model_output({"tool": "issue_refund", "order_id": "A1"})
        refund("A1", 2500)

    [action] = ledger.actions(AGENT, since())
    assert keys == [action.idempotency_key]  # the tool saw the key it can pass to the payment API
    assert (action.task_id, action.bundle_revision, action.amount, action.amount_unit) == (
        "ticket-812", 7, 2500, "USD cents",
    )
    trace = ledger.trace(action.idempotency_key)
    assert trace is not None and trace.task_name == "refund_request"
    parts = trace.parts()
    assert parts["modelInput"]["value"] == {"user": "please refund order A1", "password": "[REDACTED]"}
    assert parts["retrievedContext"] == {"ref": "s3://kb/orders/A1.json"}
    assert parts["modelOutput"]["value"] == {"tool": "issue_refund", "order_id": "A1"}
    assert current_idempotency_key() is None


def test_a_shadowed_action_keeps_the_trace_of_what_the_agent_meant_to_do(ledger: SqliteLedger) -> None:
    guard = Guard(StaticControl(mode="shadow"), ledger, agent=AGENT, tools={"issue_refund": "write"})
    with guard.task("refund_request", task_id="t1") as task:
        task.model_output("refund A1 twice")
        result = guard.call("issue_refund", {"order_id": "A1"}, lambda order_id: None)

    assert isinstance(result, Shadowed) and result.action is not None
    trace = ledger.trace(result.action.idempotency_key)
    assert trace is not None and trace.parts()["modelOutput"]["value"] == "refund A1 twice"


def test_the_retention_prunes_old_traces(ledger: SqliteLedger) -> None:
    guard = Guard(StaticControl(), ledger, agent=AGENT)
    with guard.task("t", task_id="1") as task:
        task.model_input("x")
        guard.call("issue_refund", {"order_id": "A1"}, lambda order_id: None)
    [action] = ledger.actions(AGENT, since())
    retention = TraceRetention(ledger, timedelta(days=30))

    assert retention.prune() == 0
    assert retention.prune(now=datetime.now(UTC) + timedelta(days=31)) == 1
    assert ledger.trace(action.idempotency_key) is None and ledger.get(action.idempotency_key) is not None
    with pytest.raises(ValueError, match="positive"):
        TraceRetention(ledger, timedelta(0))


def test_from_env_reads_the_ledger_url_from_a_secret_file_and_records_the_bundle(
    tmp_path: Path, write_mount: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    secret = tmp_path / "secret" / "url"
    secret.parent.mkdir()
    secret.write_text(f"sqlite:///{tmp_path / 'shared.db'}\n")
    bundle_file = write_bundle(tmp_path / "bundle" / "bundle.json")
    env = {
        "TOURNIQUET_AGENT": AGENT,
        "TOURNIQUET_NAMESPACE": "support",
        "TOURNIQUET_LEDGER": str(tmp_path / "ignored.db"),
        "TOURNIQUET_LEDGER_URL_FILE": str(secret),
        "TOURNIQUET_METRICS_PORT": "off",
        "TOURNIQUET_CONTROL_DIR": str(write_mount(tmp_path / "control", "active", [])),
        "TOURNIQUET_BUNDLE": str(bundle_file),
        "TOURNIQUET_BUNDLE_REVISION": "3",
        "TOURNIQUET_TRACE_RETENTION_DAYS": "7",
    }
    with Runtime.from_env(env, install_signal_handler=False) as runtime:
        runtime.call("issue_refund", {"order_id": "A1"}, lambda order_id: None, task_id="t1")
        assert runtime.retention is not None and runtime.retention.retention == timedelta(days=7)

    with SqliteLedger(tmp_path / "shared.db") as ledger:
        [action] = ledger.actions(AGENT, since())
    expected_hash = bundle_sha256(Bundle.model_validate(json.loads(bundle_file.read_text())))
    assert (action.bundle_revision, action.bundle_hash) == (3, expected_hash)  # the operator's revision label
    assert not (tmp_path / "ignored.db").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"TOURNIQUET_TRACE_RETENTION_DAYS": "0"}, "TOURNIQUET_TRACE_RETENTION_DAYS must be a whole number"),
        ({"TOURNIQUET_BUNDLE_REVISION": "latest"}, "TOURNIQUET_BUNDLE_REVISION must be a whole number"),
        ({"TOURNIQUET_LEDGER_URL_FILE": "/nonexistent/url"}, "cannot read TOURNIQUET_LEDGER_URL_FILE"),
        ({"TOURNIQUET_LEDGER": "mysql://ledger"}, "unknown ledger URL scheme 'mysql'"),
    ],
)
def test_a_wrong_undo_setting_is_named(extra: dict[str, str], message: str) -> None:
    env = {"TOURNIQUET_AGENT": AGENT, "TOURNIQUET_NAMESPACE": "support", **extra}
    with pytest.raises(ConfigurationError, match=message):
        Runtime.from_env(env, install_signal_handler=False, start=False)


def test_a_trace_round_trips_its_parts() -> None:
    trace = Trace("k", model_input=trace_part("hi"))
    assert trace.parts() == {"modelInput": {"value": "hi", "bytes": 4, "truncated": False}}
