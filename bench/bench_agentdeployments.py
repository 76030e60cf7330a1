"""Benchmark: AgentDeployment created → bundle pinned and consumer wired, for 1, 100 and 1,000 agents.

The operator runs as its own process (`tourniquet run`) against the API server `--server` names: the
realistic emulator in this process (the default), the real control plane (`make controlplane`), or each
in turn (`all`). Latency is measured per agent, from the moment its create call returned to the moment
a watch on Deployments sees the consumer's pod template name revision 1. The floor is the same API
writes (bundle ConfigMap, control ConfigMap, NetworkPolicy, consumer patch, status patch) issued
directly by this process against the same server, measured in the same run, with the same concurrency.

    python bench/bench_agentdeployments.py [--server emulator|real|all] [--sizes 1,100,1000]

A size given more than once is measured in that many rounds (each with its own floor), and a line gives
the median of their figures. The last line, `summary: ...`, gives the largest size's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import statistics
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_server import (  # noqa: E402
    BenchServer,
    add_arguments,
    chosen,
    cpu_seconds,
    discard_namespace,
    new_namespace,
    started,
)
from tourniquet.adapters.kube import AGENTDEPLOYMENTS, CONFIGMAPS, DEPLOYMENTS, NETWORKPOLICIES, KubeApi  # noqa: E402

__all__ = ["agent_for", "cpu_seconds", "opened", "percentiles", "watched_objects"]  # what the other benchmarks use


def documents() -> tuple[dict[str, Any], dict[str, Any]]:
    worker, agent = [d for d in yaml.safe_load_all((ROOT / "examples" / "refund-agent.yaml").read_text()) if d]
    return worker, agent


def named(doc: dict[str, Any], name: str, namespace: str) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    doc["metadata"].update(name=name, namespace=namespace)
    return doc


def agent_for(i: int, namespace: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The example's refund agent and its worker as `agent-{i}`, with pod labels of their own (the pods an
    agent's evidence lists and its drain counts are its own, as in a cluster with many agents)."""
    worker, agent = documents()
    w = named(worker, f"agent-{i}-worker", namespace)
    a = named(agent, f"agent-{i}", namespace)
    labels = {"app": f"agent-{i}"}
    w["metadata"]["labels"] = w["spec"]["selector"]["matchLabels"] = w["spec"]["template"]["metadata"]["labels"] = (
        labels
    )
    a["spec"]["podSelector"] = {"matchLabels": labels}
    a["spec"]["consumers"] = [{"kind": "Deployment", "name": w["metadata"]["name"]}]
    return w, a


def percentiles(values: list[float]) -> tuple[float, float]:
    """p50 and p99 (NaN when nothing was measured)."""
    if not values:
        return float("nan"), float("nan")
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99


async def watched_objects(
    url: str, path: str, ready: asyncio.Event, tls: ssl.SSLContext | None = None
) -> AsyncIterator[dict[str, Any]]:
    """The objects of every event on a watch of `path` (`ready` is set once the watch is open); `tls`: the CA and
    client certificate of a real API server. A 429 is retried for up to 30 s, as every Kubernetes client does: a
    real API server answers it for a while after a CRD becomes established ("storage is (re)initializing")."""
    deadline = time.perf_counter() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            response = await session.get(
                f"{url}{path}", params={"watch": "true"}, timeout=aiohttp.ClientTimeout(total=None), ssl=tls or True
            )
            if response.status != 429 or time.perf_counter() > deadline:
                break
            response.release()
            await asyncio.sleep(float(response.headers.get("Retry-After") or 1) / 4)
        async with response:
            response.raise_for_status()
            ready.set()
            async for line in response.content:
                yield json.loads(line).get("object") or {}


async def opened(watch: Coroutine[Any, Any, None], ready: asyncio.Event) -> asyncio.Task[None]:
    """Start `watch` as a task and return it once its watch is open (`ready`); one that fails first raises here."""
    task = asyncio.create_task(watch)
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        waiter.cancel()
        task.result()
        raise RuntimeError("the watch ended before it was open")
    return task


async def watch_wired(
    server: BenchServer, namespace: str, expected: int, seen: dict[str, float], ready: asyncio.Event
) -> None:
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    async with contextlib.aclosing(watched_objects(server.url, path, ready, server.ssl)) as objects:
        async for obj in objects:
            annotations = ((obj.get("spec") or {}).get("template") or {}).get("metadata", {}).get("annotations") or {}
            if annotations.get("tourniquet.dev/bundle-revision") == "1":
                seen.setdefault(obj["metadata"]["name"], time.perf_counter())
                if len(seen) >= expected:
                    return


async def create_workers(server: BenchServer, api: KubeApi, namespace: str, n: int) -> list[tuple[dict, dict]]:
    """The agents' workers, created; on the real server, once the controllers have made their pods."""
    pairs = [agent_for(i, namespace) for i in range(n)]
    for worker, _ in pairs:
        await api.create(DEPLOYMENTS, namespace, worker)
    await server.at_rest(api)
    server.settle_heap()
    return pairs


async def measure_operator(
    server: BenchServer, api: KubeApi, namespace: str, pairs: list[tuple[dict, dict]], timeout: float
) -> list[float]:
    n = len(pairs)
    seen: dict[str, float] = {}
    ready = asyncio.Event()
    watcher = await opened(watch_wired(server, namespace, n, seen, ready), ready)
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


async def measure_floor(server: BenchServer, api: KubeApi, namespace: str, n: int) -> list[float]:
    """The same writes the operator makes for one agent, issued directly, started as each agent is created.

    Agents are created exactly as in the operator run (50 at a time); each agent's writes start the
    moment its create returns, all agents in parallel, as Kopf would handle them.
    """
    from tourniquet.domain import bundles, names, network
    from tourniquet.models import AgentDeploymentSpec

    pairs = await create_workers(server, api, namespace, n)
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


async def run(server: BenchServer, sizes: list[int], timeout: float) -> str:
    """Measure every size on `server`, the floor first; returns the summary line."""
    api = await KubeApi.from_config(server.kubeconfig)
    try:
        floors: list[list[float]] = []
        # The floor first, with no operator running (it would act on these agents too).
        for round_, n in enumerate(sizes):
            await new_namespace(api, f"floor-{round_}")
            floors.append(await measure_floor(server, api, f"floor-{round_}", n))
            await discard_namespace(api, f"floor-{round_}")
        operator = server.start_operator()
        try:
            await asyncio.sleep(4)  # the operator's start-up (import, discovery, first watches)
            print(
                f"{'agents':>7} {'operator p50':>13} {'p99':>10} {'floor p50':>10} {'p99':>10} {'p50 ratio':>10}"
                f" {'operator CPU':>13} {server.cpu_label:>21}"
            )
            results: dict[int, list[Figures]] = {}
            for round_, n in enumerate(sizes):
                await new_namespace(api, f"bench-{round_}")
                pairs = await create_workers(server, api, f"bench-{round_}", n)
                op_cpu, server_cpu = cpu_seconds(operator.pid), server.cpu()
                measured = await measure_operator(server, api, f"bench-{round_}", pairs, timeout)
                op_cpu, server_cpu = cpu_seconds(operator.pid) - op_cpu, server.cpu() - server_cpu
                figures = Figures(*percentiles(measured), *percentiles(floors[round_]), len(measured), n)
                results.setdefault(n, []).append(figures)
                f = figures
                print(
                    f"{n:>7} {f.op50 * 1000:>10.1f} ms {f.op99 * 1000:>7.1f} ms {f.fl50 * 1000:>7.1f} ms"
                    f" {f.fl99 * 1000:>7.1f} ms {ratio(f.op50, f.fl50):>9.1f}x {op_cpu:>11.1f} s {server_cpu:>19.1f} s",
                    flush=True,
                )
        finally:
            operator.terminate()
            operator.wait(timeout=30)
    finally:
        await api.close()
    for n, rounds in results.items():
        if len(rounds) > 1:
            print(f"{n} agents at once, {median_of(rounds)}")
    largest = max(results)
    return f"summary: agentdeployments on {server.label}: {largest} agents at once, {median_of(results[largest])}"


@dataclass
class Figures:
    """One round: the operator's p50 and p99, its floor's, and how many of its agents were seen wired."""

    op50: float
    op99: float
    fl50: float
    fl99: float
    seen: int
    size: int


def ratio(operator: float, floor: float) -> float:
    return operator / floor if floor else float("nan")


def median_of(rounds: list[Figures]) -> str:
    """The median of the rounds' figures (one round: its own), and the p50 ratio of each round."""
    op50, op99 = statistics.median(r.op50 for r in rounds), statistics.median(r.op99 for r in rounds)
    fl50, fl99 = statistics.median(r.fl50 for r in rounds), statistics.median(r.fl99 for r in rounds)
    which = f"median of {len(rounds)} rounds" if len(rounds) > 1 else "1 round"
    missing = sum(r.size - r.seen for r in rounds)
    return (
        f"{which}: operator p50 {op50 * 1000:.1f} ms / p99 {op99 * 1000:.1f} ms, floor p50 {fl50 * 1000:.1f} ms"
        f" / p99 {fl99 * 1000:.1f} ms, p50 ratio {ratio(op50, fl50):.1f}x"
        + (f" (rounds: {', '.join(f'{ratio(r.op50, r.fl50):.1f}x' for r in rounds)})" if len(rounds) > 1 else "")
        + (f"; {missing} agents never seen wired" if missing else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--sizes", default="1,100,1000")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    summaries = []
    for kind in chosen(args.server):
        with started(kind, args.rest) as server:
            server.operator_log = args.operator_log
            print(f"AgentDeployment benchmark on the {server.label}", flush=True)
            summaries.append(asyncio.run(run(server, sizes, args.timeout)))
            print(summaries[-1], flush=True)
    if len(summaries) > 1:
        print("\n".join(summaries))


if __name__ == "__main__":
    main()
