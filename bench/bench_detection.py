"""Benchmark: detection.

1. Time to detect: a real Prometheus (Debian's `prometheus`, scrape_interval 1s) scrapes agents that use the
   runtime library; each agent's retry storm is driven at a random moment, and the time from the threshold
   being crossed (the third failure recorded) to a watch seeing its AgentIncident is measured, for each
   evaluation interval given. Skipped when the prometheus binary is missing.
2. Operator CPU per 1,000 agents' rule evaluations per interval: 1,000 agents with `--rules` built-in rules
   each, evaluated against an aiohttp fake of /api/v1/query (empty vectors: the steady state). The
   operator's CPU is measured over several intervals once every agent was evaluated, minus its idle CPU
   over the same time with the same agents and no rules.

The operator runs as its own process (`tourniquet run`) against the realistic emulator in this process.

    python bench/bench_detection.py [--intervals 2,5,15] [--runs 30] [--agents 1000] [--rules 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "bench"))

from prometheus_client import CollectorRegistry  # noqa: E402

from bench_agentdeployments import agent_for, cpu_seconds, opened, watched_objects  # noqa: E402
from kubemu.server import ApiServerThread  # noqa: E402
from tourniquet import crdgen  # noqa: E402
from tourniquet.adapters.kube import AGENTDEPLOYMENTS, DEPLOYMENTS, KubeApi  # noqa: E402
from tourniquet.runtime import AgentMetrics, Guard, StaticControl, serve_metrics  # noqa: E402

NAMESPACE = "bench"
RULES = [
    {"name": "retry-storm", "template": "retryStorm"},
    {"name": "unauthorized", "template": "policyDenial"},
    {"name": "loop", "template": "loop"},
    {"name": "token-surge", "template": "tokenSurge"},
    {"name": "budget", "template": "budgetExceeded", "params": {"dollarsPerHour": 50}},
    {"name": "context", "template": "contextGrowth"},
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def distribution(values: list[float]) -> str:
    ordered = sorted(values)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]

    return (
        f"n={len(ordered)} min {ordered[0]:.2f}s p50 {q(0.5):.2f}s p90 {q(0.9):.2f}s "
        f"p99 {q(0.99):.2f}s max {ordered[-1]:.2f}s"
    )


def start_operator(kubeconfig: str, prometheus_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "KUBECONFIG": kubeconfig,
        "PYTHONPATH": str(ROOT / "operator"),
        "TOURNIQUET_PROMETHEUS_URL": prometheus_url,
        "TOURNIQUET_HTTP_PORT": str(free_port()),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tourniquet.cli", "run", "--liveness", ""],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def create_agents(api: KubeApi, names: list[tuple[int, str]], rules: list[dict[str, Any]], interval: int) -> None:
    semaphore = asyncio.Semaphore(50)

    async def create(i: int, name: str) -> None:
        worker, agent = agent_for(i, NAMESPACE)
        agent["metadata"]["name"] = name
        agent["spec"]["detection"] = {"intervalSeconds": interval, "rules": rules}
        async with semaphore:
            await api.create(DEPLOYMENTS, NAMESPACE, worker)
            await api.create(AGENTDEPLOYMENTS, NAMESPACE, agent)

    await asyncio.gather(*(create(i, n) for i, n in names))


async def wait_evaluated(api: KubeApi, names: set[str], timeout: float) -> float:
    """Until every named agent reports its rules evaluated (DetectionDegraded False)."""
    start = time.perf_counter()
    done = 0
    while time.perf_counter() - start < timeout:
        done = 0
        for agent in await api.list(AGENTDEPLOYMENTS, NAMESPACE):
            if agent["metadata"]["name"] not in names:
                continue
            conditions = (agent.get("status") or {}).get("conditions") or []
            if any(c["type"] == "DetectionDegraded" and c["status"] == "False" for c in conditions):
                done += 1
        if done >= len(names):
            return time.perf_counter() - start
        await asyncio.sleep(0.5)
    raise SystemExit(f"only {done} of {len(names)} agents evaluated within {timeout:.0f}s")


# ---------------------------------------------------------------- 1. time to detect


class Prometheus:
    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s}\n"
            f"scrape_configs:\n  - job_name: agents\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_scraping(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/api/v1/query?query=up", timeout=1) as answer:
                    result = json.loads(answer.read())["data"]["result"]
                if result and result[0]["value"][1] == "1":
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit("Prometheus did not scrape the agents")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


async def watch_incidents(url: str, agents: set[str], seen: dict[str, float], ready: asyncio.Event) -> None:
    path = f"/apis/tourniquet.dev/v1alpha1/namespaces/{NAMESPACE}/agentincidents"
    async with contextlib.aclosing(watched_objects(url, path, ready)) as objects:
        async for obj in objects:
            for agent in (obj.get("spec") or {}).get("agents") or []:
                if agent in agents:
                    seen.setdefault(agent, time.perf_counter())


async def time_to_detect(api: KubeApi, url: str, registry: CollectorRegistry, interval: int, runs: int) -> list[float]:
    names = [(10_000 + interval * 1000 + i, f"detect-{interval}s-{i}") for i in range(runs)]
    guards = {}
    for _, name in names:
        metrics = AgentMetrics(name, registry)
        guards[name] = Guard(StaticControl(), None, metrics, agent=name, tools={"issue_refund": "write"})
    await create_agents(api, names, [{"name": "retry-storm", "template": "retryStorm"}], interval)
    agents = {n for _, n in names}
    await wait_evaluated(api, agents, timeout=120)
    seen: dict[str, float] = {}
    ready = asyncio.Event()
    watcher = await opened(watch_incidents(url, agents, seen, ready), ready)
    crossed: dict[str, float] = {}

    def storm(name: str) -> None:
        for attempt in range(3):
            try:
                with guards[name].task("refund_request", task_id=f"{name}-{attempt}"):
                    raise RuntimeError("payments API answered 503")
            except RuntimeError:
                pass
        crossed[name] = time.perf_counter()

    loop = asyncio.get_running_loop()
    for _, name in names:  # each storm at a random phase of the evaluation and scrape cycles
        loop.call_later(random.uniform(0, 2 * interval), storm, name)
    deadline = time.perf_counter() + 2 * interval + interval + 30
    while len(seen) < runs and time.perf_counter() < deadline:
        await asyncio.sleep(0.1)
    watcher.cancel()
    missing = [n for _, n in names if n not in seen]
    if missing:
        print(f"  ! {len(missing)} storm(s) not detected in time: {', '.join(missing[:5])}", flush=True)
    return [seen[n] - crossed[n] for _, n in names if n in seen and n in crossed]


# ---------------------------------------------------------------- 2. CPU per 1,000 agents


class FakeQueryApi:
    """/api/v1/query answering an empty vector, in its own thread and loop (its CPU is not the operator's)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.queries = 0
        self.rule_evaluations = 0  # an agent's rules travel in one query, each tagged with its name
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        self._started.wait(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def query(request: web.Request) -> web.Response:
            self.queries += 1
            self.rule_evaluations += max(1, request.query.get("query", "").count('"tourniquet_rule"'))
            return web.json_response({"status": "success", "data": {"resultType": "vector", "result": []}})

        app = web.Application()
        app.router.add_route("*", "/api/v1/query", query)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._started.set()
        self._loop.run_forever()


async def cpu_per_thousand(
    api: KubeApi, fake: FakeQueryApi, agents: int, rules: int, interval: int, windows: int, pid: int
) -> None:
    names = [(i, f"agent-{i}") for i in range(agents)]
    await create_agents(api, names, [], interval)
    start = time.perf_counter()
    while True:
        items = await api.list(AGENTDEPLOYMENTS, NAMESPACE)
        wired = [a for a in items if a["metadata"]["name"].startswith("agent-")]
        if sum(1 for a in wired if (a.get("status") or {}).get("bundle", {}).get("revision") == 1) >= agents:
            break
        if time.perf_counter() - start > 600:
            raise SystemExit("agents did not converge within 600s")
        await asyncio.sleep(1)
    print(f"{agents} agents converged in {time.perf_counter() - start:.1f}s", flush=True)
    await asyncio.sleep(2)
    window = windows * interval
    idle = cpu_seconds(pid)
    await asyncio.sleep(window)
    idle = cpu_seconds(pid) - idle

    semaphore = asyncio.Semaphore(50)

    async def add_rules(name: str) -> None:
        async with semaphore:
            detection = {"intervalSeconds": interval, "rules": RULES[:rules]}
            await api.patch(AGENTDEPLOYMENTS, NAMESPACE, name, {"spec": {"detection": detection}})

    await asyncio.gather(*(add_rules(n) for _, n in names))
    took = await wait_evaluated(api, {n for _, n in names}, timeout=600)
    print(f"rules added and evaluated on every agent in {took:.1f}s", flush=True)
    await asyncio.sleep(2 * interval)  # past the status writes of the first passes
    busy = cpu_seconds(pid)
    queries, evaluations = fake.queries, fake.rule_evaluations
    await asyncio.sleep(window)
    busy = cpu_seconds(pid) - busy
    queries, evaluations = fake.queries - queries, fake.rule_evaluations - evaluations
    passes = evaluations / (agents * rules)
    per_interval = (busy - idle) / passes * (1000 / agents) if passes else float("nan")
    print(
        f"{agents} agents x {rules} rules, interval {interval}s: {evaluations} rule evaluations in {queries} "
        f"queries in {window}s "
        f"({passes:.1f} passes per agent); operator CPU {busy:.2f}s busy vs {idle:.2f}s idle over {window}s",
        flush=True,
    )
    print(
        f"=> operator CPU per 1,000 agents' rule evaluations per interval: {per_interval:.2f} CPU-seconds "
        f"({per_interval / interval * 100:.0f}% of one core at a {interval}s interval; "
        f"{per_interval / (rules * 1000) * 1e6:.0f} µs per rule evaluation)",
        flush=True,
    )


async def run(args: argparse.Namespace) -> None:
    with ApiServerThread().start() as server, tempfile.TemporaryDirectory() as tmp:
        server.apply_manifests(crdgen.build_crds())
        server.apply_manifests([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
        kubeconfig = str(server.write_kubeconfig(Path(tmp) / "kubeconfig"))
        api = await KubeApi.from_config(kubeconfig)
        try:
            if args.runs and shutil.which("prometheus"):
                registry = CollectorRegistry()
                metrics_server, _ = serve_metrics(0, registry=registry, addr="127.0.0.1")
                prometheus = Prometheus(Path(tmp), f"127.0.0.1:{metrics_server.server_port}")
                operator = start_operator(kubeconfig, prometheus.url)
                try:
                    prometheus.wait_scraping()
                    print("Time to detect (threshold crossed -> AgentIncident exists), retryStorm, scrape 1s:")
                    for interval in args.intervals:
                        latencies = await time_to_detect(api, server.url, registry, interval, args.runs)
                        print(f"  interval {interval:>2}s: {distribution(latencies)}", flush=True)
                finally:
                    operator.terminate()
                    operator.wait(30)
                    prometheus.stop()
                    metrics_server.shutdown()
                for incident in await api.list(AGENTDEPLOYMENTS, NAMESPACE):
                    await api.delete(AGENTDEPLOYMENTS, NAMESPACE, incident["metadata"]["name"])
            elif args.runs:
                print("Time to detect: skipped (no prometheus binary; Debian: apt-get install prometheus)")
            if args.agents:
                fake = FakeQueryApi()
                operator = start_operator(kubeconfig, fake.url)
                try:
                    await cpu_per_thousand(
                        api, fake, args.agents, args.rules, args.cpu_interval, args.windows, operator.pid
                    )
                finally:
                    operator.terminate()
                    operator.wait(30)
        finally:
            await api.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--intervals", default="2,5,15", help="evaluation intervals for time to detect")
    parser.add_argument("--runs", type=int, default=30, help="storms per interval (0: skip time to detect)")
    parser.add_argument("--agents", type=int, default=1000, help="agents for the CPU figure (0: skip)")
    parser.add_argument("--rules", type=int, default=3, choices=range(1, len(RULES) + 1))
    parser.add_argument("--cpu-interval", type=int, default=15, help="evaluation interval for the CPU figure")
    parser.add_argument("--windows", type=int, default=4, help="intervals the CPU is measured over")
    args = parser.parse_args()
    args.intervals = [int(s) for s in args.intervals.split(",") if s]
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
