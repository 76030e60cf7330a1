"""Shared fixtures: the realistic API server with the project's CRDs, the real operator, and helpers."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

# The operator's timers are read at import: make them fast for tests before anything imports them.
os.environ.setdefault("TOURNIQUET_RESYNC_SECONDS", "1")
os.environ.setdefault("TOURNIQUET_REASSERT_SECONDS", "1")

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--kube-context", default=None, help="Run the cluster tests against this kubeconfig context.")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--kube-context"):
        return
    skip = pytest.mark.skip(reason="needs a real cluster: pass --kube-context=NAME")
    for item in items:
        if "cluster" in item.keywords:
            item.add_marker(skip)


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def example(name: str = "refund-agent.yaml") -> list[dict[str, Any]]:
    return load_yaml(ROOT / "examples" / name)


def wait_for(fn: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> T:
    """Poll until fn() returns something truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or fn}; last value: {last!r}")


class Cluster:
    """Thread-safe access to the emulator's objects for assertions and set-up."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.emulator = server.emulator

    def get(self, resource: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        return self.server.call(self.emulator.get_object, resource, name, namespace=namespace)

    def list(self, resource: str, namespace: str | None = "default", label_selector: str | None = None) -> list[dict]:
        return self.server.call(
            self.emulator.list_objects, resource, namespace=namespace, label_selector=label_selector
        )

    def apply(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.server.apply_manifests(docs)

    def patch(self, resource: str, name: str, patch: Any, namespace: str = "default", **kw: Any) -> dict[str, Any]:
        return self.server.call(self.emulator.patch_object, resource, name, patch, namespace=namespace, **kw)

    def delete(self, resource: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        return self.server.call(self.emulator.delete_object, resource, name, namespace=namespace)

    def mark(self) -> int:
        return self.server.call(lambda: self.emulator.requests_served)

    def writes(self, resource: str | None = None, since: int = 0) -> list[Any]:
        return self.server.call(self.emulator.writes, resource, since=since)

    def requests_to(self, path_part: str, since: int = 0) -> list[str]:
        """Every request (reads too) since `since` whose path contains `path_part`, as "METHOD path"."""
        return self.server.call(
            lambda: [
                f"{r.method.value} {r.url.path}"
                for r in self.emulator._requests
                if r.id >= since and path_part in r.url.path
            ]
        )

    def fault(self, verb: str, resource: str, **kw: Any) -> Any:
        return self.server.call(self.emulator.inject_fault, verb, resource, **kw)

    def status(self, resource: str, name: str, namespace: str = "default") -> dict[str, Any]:
        return (self.get(resource, name, namespace) or {}).get("status") or {}


AD = "tourniquet.dev/v1alpha1/agentdeployments"
AI = "tourniquet.dev/v1alpha1/agentincidents"
CM = "v1/configmaps"
DEPLOY = "apps/v1/deployments"
NP = "networking.k8s.io/v1/networkpolicies"


@pytest.fixture
def api_server() -> Iterator[Any]:
    from tourniquet.sandbox.server import ApiServerThread

    with ApiServerThread().start() as server:
        crds = [doc for path in sorted((ROOT / "crds").glob("*.yaml")) for doc in load_yaml(path)]
        server.apply_manifests(crds)
        yield server


@pytest.fixture
def cluster(api_server: Any) -> Cluster:
    return Cluster(api_server)


@pytest.fixture
def kubeconfig(api_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = str(api_server.write_kubeconfig(tmp_path / "kubeconfig"))
    monkeypatch.setenv("KUBECONFIG", path)
    return path


@pytest.fixture
async def kube(kubeconfig: str) -> Any:
    from tourniquet.adapters.kube import KubeApi

    api = await KubeApi.from_config(kubeconfig)
    yield api
    await api.close()


class OperatorProcess:
    """The real operator (Kopf) in its own thread and loop; can be stopped and started again."""

    def __init__(self, kubeconfig: str, extra_args: tuple[str, ...] = ()) -> None:
        self.kubeconfig = kubeconfig
        self.extra_args = extra_args  # more `kopf run` arguments, e.g. --liveness=URL
        self.runner: Any = None

    def start(self) -> OperatorProcess:
        from kopf.testing import KopfRunner

        args = ["run", "--all-namespaces", "--standalone", *self.extra_args, "-m", "tourniquet.handlers"]
        self.runner = KopfRunner(args, timeout=60)
        self.runner.__enter__()
        return self

    def stop(self) -> str:
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.__exit__(None, None, None)
            return str(runner.output)
        return ""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The operator's /metrics as {(sample name, sorted labels): value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def operator(kubeconfig: str) -> Iterator[OperatorProcess]:
    process = OperatorProcess(kubeconfig).start()
    yield process
    output = process.stop()
    if "Traceback" in output:
        print(output[-5000:])
