"""Fixtures for the agent runtime's tests: a ledger on disk, metrics, a guard, and a Kubernetes API."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import ROOT

# The demo refund agent (examples/refund_agent): the compensation tests run it.
if str(ROOT / "examples") not in sys.path:
    sys.path.insert(0, str(ROOT / "examples"))

from tourniquet.runtime import AgentMetrics, Guard, SqliteLedger, StaticControl
from tourniquet.runtime.ledger import SqlLedger, open_ledger

AGENT = "refund-agent"
NAMESPACE = "support"
TOOLS = {"issue_refund": "write", "send_email": "write", "lookup_order": "read"}


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[SqliteLedger]:
    with SqliteLedger(tmp_path / "ledger.db") as opened:
        yield opened


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a ledger lives, once per backend: a SQLite file, or a fresh database on the suite's PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def any_ledger(ledger_target: str) -> Iterator[SqlLedger]:
    """The ledger on each backend (a test using it runs twice)."""
    with open_ledger(ledger_target) as opened:
        yield opened


@pytest.fixture
def reopen_ledger(ledger_target: str) -> Callable[[], SqlLedger]:
    """Open the same ledger again, as another process would (its own connections)."""
    return lambda: open_ledger(ledger_target)


@pytest.fixture
def metrics() -> AgentMetrics:
    return AgentMetrics(AGENT)


@pytest.fixture
def control() -> StaticControl:
    return StaticControl()


@pytest.fixture
def guard(control: StaticControl, ledger: SqliteLedger, metrics: AgentMetrics) -> Guard:
    return Guard(control, ledger, metrics, agent=AGENT, tools=TOOLS)


@pytest.fixture
def sample(metrics: AgentMetrics) -> Callable[..., float]:
    """``sample("tourniquet_agent_tool_calls_total", tool=..., outcome=...)``: one series' value (0 if absent)."""

    def value(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, {"agent": metrics.agent, **labels}) or 0.0

    return value


@pytest.fixture
def write_mount() -> Callable[..., Path]:
    """``write_mount(dir, mode, revoked)``: a mounted control ConfigMap as the kubelet lays it out."""

    def write(directory: Path, mode: str, revoked: list[str] | str) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "mode").write_text(mode)
        (directory / "revokedTools").write_text(revoked if isinstance(revoked, str) else json.dumps(revoked))
        return directory

    return write


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def unreachable_kubeconfig(tmp_path: Path, closed_port: int) -> Path:
    path = tmp_path / "unreachable.kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{closed_port}"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


# The realistic API server (kubemu.server in testing/kubemu, a KMock-based emulator in a background thread).


@pytest.fixture(scope="module")
def api_server() -> Iterator[Any]:
    from kubemu.server import ApiServerThread

    with ApiServerThread() as server:
        server.apply_manifests([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
        yield server


@pytest.fixture(scope="module")
def kubeconfig(api_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path: Path = api_server.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig", namespace=NAMESPACE)
    return path


@pytest.fixture(scope="module")
def core_api(kubeconfig: Path) -> Any:
    """The official client, used the way the operator changes the control ConfigMap."""
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))


@pytest.fixture(scope="module")
def set_control(core_api: Any) -> Callable[[str, dict[str, str]], None]:
    """``set_control(agent, data)``: create or update ``<agent>-control`` as the operator does."""
    from kubernetes.client.exceptions import ApiException

    def apply(agent: str, data: dict[str, str]) -> None:
        name = f"{agent}-control"
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "data": data,
        }
        try:
            core_api.create_namespaced_config_map(NAMESPACE, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            core_api.patch_namespaced_config_map(name, NAMESPACE, {"data": data})

    return apply
