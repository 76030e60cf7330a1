"""The agent process: SIGTERM ends the taking of work, not the task in hand; the runtime wires from env."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tourniquet.domain.bundles import bundle_data
from tourniquet.models import Bundle
from tourniquet.runtime import (
    BundleError,
    ConfigurationError,
    Runtime,
    Shadowed,
    StopToken,
    iter_work,
    load_bundle_tools,
)

WORKER = textwrap.dedent(
    """
    import signal, time
    from tourniquet.runtime import install_sigterm_handler

    signal.signal(signal.SIGTERM, lambda *_: print("previous handler ran", flush=True))
    stop = install_sigterm_handler()
    print("ready", flush=True)
    task = 0
    while stop.should_take_work():
        task += 1
        print(f"started task {task}", flush=True)
        time.sleep(0.4)  # the task in hand
        print(f"finished task {task}", flush=True)
    print(f"stopped taking work: {stop.reason}", flush=True)
    """
)


def test_sigterm_stops_taking_work_after_the_task_in_hand() -> None:
    worker = subprocess.Popen([sys.executable, "-c", WORKER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert worker.stdout is not None
    lines = []
    for line in worker.stdout:
        lines.append(line.strip())
        if line.strip() == "started task 2":
            worker.send_signal(signal.SIGTERM)
            break
    out, err = worker.communicate(timeout=10)
    lines += out.split("\n")

    assert worker.returncode == 0, err
    assert [line for line in lines if line] == [
        "ready",
        "started task 1",
        "finished task 1",
        "started task 2",
        "previous handler ran",
        "finished task 2",
        "stopped taking work: received SIGTERM",
    ]


def write_bundle(path: Path) -> Path:
    bundle = Bundle.model_validate(
        {
            "model": {"provider": "openai", "name": "gpt-5", "version": "2026-08-06"},
            "prompt": {"template": "You are the refund assistant."},
            "tools": [{"name": "issue_refund"}, {"name": "lookup_order", "sideEffects": "read"}],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(bundle_data(bundle)["bundle.json"])  # exactly what the operator mounts
    return path


def test_the_bundle_the_operator_mounts_gives_each_tools_side_effects(tmp_path: Path) -> None:
    assert load_bundle_tools(write_bundle(tmp_path / "bundle.json")) == {
        "issue_refund": "write",
        "lookup_order": "read",
    }
    assert load_bundle_tools(tmp_path / "absent.json") == {}
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(BundleError, match="cannot read the tools of the bundle"):
        load_bundle_tools(tmp_path / "broken.json")


def test_from_env_wires_control_guard_ledger_and_metrics(
    tmp_path: Path, write_mount: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # no API here: the mount is followed
    env = {
        "TOURNIQUET_AGENT": "refund-agent",
        "TOURNIQUET_NAMESPACE": "support",
        "TOURNIQUET_LEDGER": str(tmp_path / "state" / "ledger.db"),
        "TOURNIQUET_METRICS_PORT": "0",
        "TOURNIQUET_CONTROL_DIR": str(write_mount(tmp_path / "control", "shadow", [])),
        "TOURNIQUET_BUNDLE": str(write_bundle(tmp_path / "bundle" / "bundle.json")),
    }
    with Runtime.from_env(env, install_signal_handler=False) as runtime:
        refunds: list[str] = []
        with runtime.task("refund_request", task_id="ticket-1"):
            order = runtime.call("lookup_order", {"order_id": "A1"}, lambda order_id: {"id": order_id})
            refund = runtime.call("issue_refund", {"order_id": "A1"}, lambda order_id: refunds.append(order_id))
        assert runtime.metrics_server is not None
        port = runtime.metrics_server.server_port
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

        assert order == {"id": "A1"}
        assert isinstance(refund, Shadowed) and refunds == []
        assert runtime.should_take_work()
    assert 'tourniquet_agent_shadow_mode{agent="refund-agent"} 1.0' in scraped
    shadowed = 'tourniquet_agent_tool_calls_total{agent="refund-agent",outcome="shadowed",tool="issue_refund"} 1.0'
    assert shadowed in scraped
    assert (tmp_path / "state" / "ledger.db").exists()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "TOURNIQUET_AGENT is not set"),
        ({"TOURNIQUET_AGENT": "a", "TOURNIQUET_NAMESPACE": "n", "TOURNIQUET_METRICS_PORT": "http"}, "must be a port"),
    ],
)
def test_a_wrong_environment_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Runtime.from_env(env, install_signal_handler=False, start=False)


def test_the_runtime_imports_without_kopf_or_the_kubernetes_client() -> None:
    probe = (
        "import json, sys, tourniquet.runtime; "
        "print(json.dumps([m for m in ('kopf', 'kubernetes') if m in sys.modules]))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == []


def test_iter_work_stops_pulling_once_a_stop_is_requested() -> None:
    stop = StopToken()
    queue = ["t1", None, "t2", "t3"]
    handled = []
    for item in iter_work(stop, lambda: queue.pop(0) if queue else None, idle_seconds=0.01):
        handled.append(item)
        if item == "t2":
            stop.request_stop("drained")

    assert handled == ["t1", "t2"]
    assert queue == ["t3"]
