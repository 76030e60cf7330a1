"""Benchmark: AgentDeployment created → bundle pinned and consumer wired, for 1, 100 and 1,000 agents.

The operator runs as its own process (`tourniquet run`) against the realistic emulator in this
process. Latency is measured per agent, from the moment its create call returned to the moment a
watch on Deployments sees the consumer's pod template name revision 1. The floor is the same API
writes (bundle ConfigMap, control ConfigMap, NetworkPolicy, consumer patch, status patch) issued
directly by this process, measured in the same run, with the same concurrency.

    python bench/bench_agentdeployments.py [--sizes 1,100,1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))

from tourniquet import crdgen  # noqa: E402
from tourniquet.adapters.kube import AGENTDEPLOYMENTS, CONFIGMAPS, DEPLOYMENTS, NETWORKPOLICIES, KubeApi  # noqa: E402
from tourniquet.sandbox.server import ApiServerThread  # noqa: E402


def documents() -> tuple[dict[str, Any], dict[str, Any]]:
    worker, agent = [d for d in yaml.safe_load_all((ROOT / "examples" / "refund-agent.yaml").read_text()) if d]
    return worker, agent


def named(doc: dict[str, Any], name: str, namespace: str) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    doc["metadata"].update(name=name, namespace=namespace)
    return doc


def agent_for(i: int, namespace: str) -> tuple[dict[str, Any], dict[str, Any]]:
    worker, agent = documents()
    w = named(worker, f"agent-{i}-worker", namespace)
    a = named(agent, f"agent-{i}", namespace)
    a["spec"]["consumers"] = [{"kind": "Deployment", "name": w["metadata"]["name"]}]
    return w, a


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99


async def watched_objects(url: str, path: str, ready: asyncio.Event) -> AsyncIterator[dict[str, Any]]:
    """The objects of every event on a watch of `path` (`ready` is set once the watch is open)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}{path}", params={"watch": "true"}, timeout=aiohttp.ClientTimeout(total=None)) as response,
    ):
        ready.set()
        async for line in response.content:
            yield json.loads(line).get("object") or {}


async def watch_wired(url: str, namespace: str, expected: int, seen: dict[str, float], ready: asyncio.Event) -> None:
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    async with contextlib.aclosing(watched_objects(url, path, ready)) as objects:
        async for obj in objects:
            annotations = ((obj.get("spec") or {}).get("template") or {}).get("metadata", {}).get("annotations") or {}
            if annotations.get("tourniquet.dev/bundle-revision") == "1":
                seen.setdefault(obj["metadata"]["name"], time.perf_counter())
                if len(seen) >= expected:
                    return


async def measure_operator(api: KubeApi, url: str, namespace: str, n: int, timeout: float) -> list[float]:
    pairs = [agent_for(i, namespace) for i in range(n)]
    for worker, _ in pairs:
        await api.create(DEPLOYMENTS, namespace, worker)
    seen: dict[str, float] = {}
    ready = asyncio.Event()
    watcher = asyncio.create_task(watch_wired(url, namespace, n, seen, ready))
    await ready.wait()
    created: dict[str, float] = {}

    async def create(agent: dict[str, Any], worker: dict[str, Any]) -> None:
        await api.create(AGENTDEPLOYMENTS, namespace, agent)
        created[worker["metadata"]["name"]] = time.perf_counter()

    semaphore = asyncio.Semaphore(50)

    async def limited(agent: dict[str, Any], worker: dict[str, Any]) -> None:
        async with semaphore:
            await create(agent, worker)

    await asyncio.gather(*(limited(a, w) for w, a in pairs))
    try:
        await asyncio.wait_for(watcher, timeout)
    except TimeoutError:
        print(f"  ! only {len(seen)} of {n} agents wired within {timeout:.0f}s", flush=True)
    return [max(0.0, seen[name] - created[name]) for name in seen if name in created]


async def measure_floor(api: KubeApi, namespace: str, n: int) -> list[float]:
    """The same writes the operator makes for one agent, issued directly, started as each agent is created.

    Agents are created exactly as in the operator run (50 at a time); each agent's writes start the
    moment its create returns, all agents in parallel, as Kopf would handle them.
    """
    from tourniquet.domain import bundles, names, network
    from tourniquet.models import AgentDeploymentSpec

    pairs = [agent_for(i, namespace) for i in range(n)]
    for worker, _ in pairs:
        await api.create(DEPLOYMENTS, namespace, worker)
    latencies: list[float] = []

    async def writes(agent: dict[str, Any], start: float) -> None:
        name = agent["metadata"]["name"]
        spec = AgentDeploymentSpec.model_validate(agent["spec"])
        owner = names.owner_reference("AgentDeployment", name, agent["metadata"]["uid"])
        meta = {"namespace": namespace, "ownerReferences": [owner]}
        await api.create(
            CONFIGMAPS,
            namespace,
            {
                "metadata": {**meta, "name": names.bundle_configmap(name, 1)},
                "immutable": True,
                "data": bundles.bundle_data(spec.bundle),
            },
        )
        await api.create(
            CONFIGMAPS,
            namespace,
            {
                "metadata": {**meta, "name": names.control_configmap(name)},
                "data": network.desired_control_data("active", set()),
            },
        )
        await api.create(
            NETWORKPOLICIES,
            namespace,
            {
                "metadata": {**meta, "name": names.network_policy(name)},
                "spec": network.desired_network_policy_spec(spec, set()),
            },
        )
        await api.patch(
            DEPLOYMENTS,
            namespace,
            spec.consumers[0].name,
            {"spec": {"template": {"metadata": {"annotations": {"tourniquet.dev/bundle-revision": "1"}}}}},
            patch_type="strategic",
        )
        await api.patch(
            AGENTDEPLOYMENTS, namespace, name, {"status": {"bundle": {"revision": 1}}}, subresource="status"
        )
        latencies.append(time.perf_counter() - start)

    tasks: list[asyncio.Task[None]] = []
    semaphore = asyncio.Semaphore(50)

    async def create(agent: dict[str, Any]) -> None:
        async with semaphore:
            created = await api.create(AGENTDEPLOYMENTS, namespace, agent)
        tasks.append(asyncio.create_task(writes(created, time.perf_counter())))

    await asyncio.gather(*(create(a) for _, a in pairs))
    await asyncio.gather(*tasks)
    return latencies


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default), from /proc."""
    fields = Path(f"/proc/{pid or 'self'}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(sizes: list[int], timeout: float) -> None:
    with ApiServerThread().start() as server, tempfile.TemporaryDirectory() as tmp:
        server.apply_manifests(crdgen.build_crds())
        kubeconfig = str(server.write_kubeconfig(Path(tmp) / "kubeconfig"))
        api = await KubeApi.from_config(kubeconfig)
        floors: dict[int, list[float]] = {}
        # The floor first, with no operator running (it would act on these agents too).
        for n in sizes:
            server.apply_manifests([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"floor-{n}"}}])
            floors[n] = await measure_floor(api, f"floor-{n}", n)
            for agent in await api.list(AGENTDEPLOYMENTS, f"floor-{n}"):
                await api.delete(AGENTDEPLOYMENTS, f"floor-{n}", agent["metadata"]["name"])
        env = {**os.environ, "KUBECONFIG": kubeconfig, "PYTHONPATH": str(ROOT / "operator")}
        operator = subprocess.Popen(
            [sys.executable, "-m", "tourniquet.cli", "run", "--liveness", ""],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await asyncio.sleep(4)  # the operator's start-up (import, discovery, first watches)
            print(
                f"{'agents':>7} {'operator p50':>13} {'p99':>10} {'floor p50':>10} {'p99':>10} {'p50 ratio':>10}"
                f" {'operator CPU':>13} {'API server+bench CPU':>21}"
            )
            for n in sizes:
                server.apply_manifests([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"bench-{n}"}}])
                op_cpu, my_cpu = cpu_seconds(operator.pid), cpu_seconds()
                measured = await measure_operator(api, server.url, f"bench-{n}", n, timeout)
                op_cpu, my_cpu = cpu_seconds(operator.pid) - op_cpu, cpu_seconds() - my_cpu
                op50, op99 = percentiles(measured)
                fl50, fl99 = percentiles(floors[n])
                print(
                    f"{n:>7} {op50 * 1000:>10.1f} ms {op99 * 1000:>7.1f} ms {fl50 * 1000:>7.1f} ms "
                    f"{fl99 * 1000:>7.1f} ms {op50 / fl50 if fl50 else float('nan'):>9.1f}x"
                    f" {op_cpu:>11.1f} s {my_cpu:>19.1f} s",
                    flush=True,
                )
        finally:
            await api.close()
            operator.terminate()
            operator.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,100,1000")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    asyncio.run(run([int(s) for s in args.sizes.split(",")], args.timeout))


if __name__ == "__main__":
    main()
