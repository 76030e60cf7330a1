"""The API server a benchmark runs on (`--server`): the realistic emulator in this process, or a real control plane.

`emulator` is the sandbox's API server (testing/kubemu/), served from a thread of this process.
`real` is etcd, kube-apiserver and kube-controller-manager from `make controlplane`, started by
tests/controlplane.py as the test suite starts them, with crds/*.yaml applied. On both, the operator and the
floor use the same identity (the emulator has no authentication; on the real server the admin client
certificate, so neither pays for RBAC). `all` runs the benchmark on each, one after the other, each with its own
floor.

On the real server the controller manager does what a cluster does: Deployments get ReplicaSets and Pods (they
stay Pending: there is no scheduler or kubelet), a drain deletes them, a restore re-creates them, a changed pod
template rolls out. A benchmark waits for it to be quiet (`at_rest`) before each measured burst.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT))

from tourniquet.adapters.kube import NAMESPACES, PODS, ApiError, KubeApi  # noqa: E402

SERVERS = ("emulator", "real")
CHOICES = (*SERVERS, "all")


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default), from /proc."""
    fields = Path(f"/proc/{pid or 'self'}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def chosen(server: str) -> tuple[str, ...]:
    """The servers `--server` names, in the order they run."""
    return SERVERS if server == "all" else (server,)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark has for its server."""
    parser.add_argument(
        "--server", choices=CHOICES, default="emulator", help="the API server to run on (default: emulator)"
    )
    parser.add_argument(
        "--operator-log", default=None, metavar="FILE", help="write the operator's log there (verbose); else dropped"
    )
    parser.add_argument(
        "--rest",
        type=float,
        default=3.0,
        help="real server: seconds the controllers must have left the pod count unchanged before a burst",
    )


@dataclass
class BenchServer:
    """What a benchmark needs of its API server, whichever it is."""

    kind: str  # "emulator" or "real"
    url: str
    kubeconfig: str  # the operator's and the floor's: the same identity
    label: str  # "emulator", or "real kube-apiserver v1.37.2"
    ssl: ssl.SSLContext | None = None  # for this process's own watches (aiohttp)
    server_pids: tuple[int, ...] = ()  # the real server's processes (kube-apiserver, etcd)
    controllers: bool = False  # whether Deployments get ReplicaSets and Pods
    rest: float = 3.0  # how long the controllers must have been quiet before a burst (`--rest`)
    operator_log: str | None = None  # where the operator's log goes (`--operator-log`), verbose
    _emulator: Any = None
    _plane: Any = None

    def cpu(self) -> float:
        """CPU seconds of the API server so far: on the emulator this whole process (the server and the
        benchmark's own small client), on the real server kube-apiserver and etcd."""
        if self._emulator is not None:
            return cpu_seconds()
        return sum(cpu_seconds(pid) for pid in self.server_pids)

    @property
    def cpu_label(self) -> str:
        return "API server+bench CPU" if self._emulator is not None else "apiserver+etcd CPU"

    def settle_heap(self) -> None:
        """Before each measured burst: collect and freeze this process's heap.

        On the emulator this process is the API server: without this, a full collection over the emulator's
        objects (thousands with 1,000 agents, far fewer in a floor round) lands in some bursts and not others.
        On the real server it is only the benchmark's client; the same call keeps the two runs alike.
        """
        gc.collect()
        gc.freeze()

    def start_operator(self) -> subprocess.Popen[bytes]:
        """`tourniquet run` as its own process, serving every namespace, as the server's admin user."""
        env = {**os.environ, "KUBECONFIG": self.kubeconfig, "PYTHONPATH": str(ROOT / "operator")}
        argv = [sys.executable, "-m", "tourniquet.cli", "run", "--liveness", ""]
        if self.operator_log is None:
            return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(self.operator_log, "ab") as log:
            return subprocess.Popen([*argv, "--verbose"], env=env, stdout=log, stderr=subprocess.STDOUT)

    async def at_rest(self, api: KubeApi, timeout: float = 600.0) -> None:
        """Return once the controllers have done their work: the cluster's pod count unchanged for `rest`
        seconds (at once on the emulator, which runs no controllers)."""
        if not self.controllers:
            return
        start = last_change = time.perf_counter()
        last = -1
        while time.perf_counter() - start < timeout:
            try:
                page = await api.request("GET", PODS.path(None), query={"limit": 1})  # a count, not 3,000 pods
            except ApiError as error:  # a busy API server that did not answer in time: ask again
                if not error.transient:
                    raise
                continue
            count = len(page.get("items") or []) + int(page["metadata"].get("remainingItemCount") or 0)
            now = time.perf_counter()
            if count != last:
                last, last_change = count, now
            elif now - last_change >= self.rest:
                return
            await asyncio.sleep(0.5)
        raise SystemExit(f"the controllers were still creating or deleting pods after {timeout:.0f}s")


async def new_namespace(api: KubeApi, name: str) -> None:
    await api.create(NAMESPACES, None, {"metadata": {"name": name}})


async def discard_namespace(api: KubeApi, name: str, timeout: float = 300.0) -> None:
    """Delete a namespace and everything in it (the floor's, before the operator starts, so that it does not act
    on them) and wait until it is gone; on the real server, the namespace controller deletes its objects."""
    await api.delete(NAMESPACES, None, name)
    start = time.perf_counter()
    while await api.get_or_none(NAMESPACES, None, name) is not None:
        if time.perf_counter() - start > timeout:
            raise SystemExit(f"namespace {name} still there {timeout:.0f}s after its deletion")
        await asyncio.sleep(0.5)


def ssl_context(kubeconfig: Path) -> ssl.SSLContext:
    """What a client needs to reach the server of `kubeconfig`: its CA, and the user's client certificate."""
    config = yaml.safe_load(kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    user = config["users"][0]["user"]
    context = ssl.create_default_context(cafile=cluster["certificate-authority"])
    context.load_cert_chain(user["client-certificate"], user["client-key"])
    return context


@contextlib.contextmanager
def started(kind: str, rest: float = 3.0, **emulator_options: Any) -> Iterator[BenchServer]:
    """The API server `kind` ("emulator" or "real"), up, with the project's CRDs; stopped on exit."""
    if kind == "emulator":
        from kubemu.server import ApiServerThread
        from tourniquet import crdgen

        with ApiServerThread(**emulator_options).start() as server, tempfile.TemporaryDirectory() as tmp:
            server.apply_manifests(crdgen.build_crds())
            kubeconfig = str(server.write_kubeconfig(Path(tmp) / "kubeconfig"))
            yield BenchServer("emulator", server.url, kubeconfig, "emulator", _emulator=server)
        return
    if kind != "real":
        raise ValueError(f"unknown server {kind!r}: one of {', '.join(CHOICES)}")
    from tests.controlplane import ControlPlane, ControlPlaneError, default_bin_dir, missing_binaries
    from tests.realcluster import RealCluster

    missing = missing_binaries()
    if missing:
        raise SystemExit(
            f"no real control plane: {', '.join(missing)} missing in {default_bin_dir()}; run `make controlplane`"
        )
    try:
        plane = ControlPlane().start()
    except ControlPlaneError as error:
        raise SystemExit(f"the real control plane did not start: {error}") from error
    try:
        crds = [doc for path in sorted((ROOT / "crds").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]
        RealCluster(plane, "default").apply(d for d in crds if d)  # waits until each is Established
        pids = tuple(p.popen.pid for p in plane.processes if p.name in ("kube-apiserver", "etcd"))
        version = plane.version()["gitVersion"]
        yield BenchServer(
            "real",
            plane.url,
            str(plane.admin_kubeconfig),
            f"real kube-apiserver {version}",
            ssl=ssl_context(plane.admin_kubeconfig),
            server_pids=pids,
            controllers=True,
            rest=rest,
            _plane=plane,
        )
    finally:
        plane.stop()
