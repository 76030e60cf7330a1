"""Benchmark: AgentIncident created → every lever observed applied, for 1, 10 and 100 simultaneous
incidents across 1,000 agents (SEV1 playbook: revoke tools, capture evidence, drain).

The operator runs as its own process against the realistic emulator in this process. Latency is
per incident, from the moment its create call returned to the moment a watch sees its
`Contained` condition turn True. The floor is the same writes (control ConfigMap, NetworkPolicy,
evidence ConfigMap, consumer drain, incident status) issued directly, measured in the same run.

    python bench/bench_incidents.py [--agents 1000] [--sizes 1,10,100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_agentdeployments import agent_for, cpu_seconds, percentiles  # noqa: E402
from tourniquet import crdgen  # noqa: E402
from tourniquet.adapters.kube import (  # noqa: E402
    AGENTDEPLOYMENTS,
    AGENTINCIDENTS,
    CONFIGMAPS,
    DEPLOYMENTS,
    EVENTS,
    NETWORKPOLICIES,
    KubeApi,
)
from tourniquet.sandbox.server import ApiServerThread  # noqa: E402

NAMESPACE = "bench"


def incident_for(agent: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "tourniquet.dev/v1alpha1",
        "kind": "AgentIncident",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"agents": [agent], "severity": "SEV1", "contain": ["revokeTools", "drain"], "class": "tool-misuse"},
    }


async def watch_contained(url: str, names: set[str], seen: dict[str, float], ready: asyncio.Event) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{url}/apis/tourniquet.dev/v1alpha1/namespaces/{NAMESPACE}/agentincidents",
            params={"watch": "true"},
            timeout=aiohttp.ClientTimeout(total=None),
        ) as response,
    ):
        ready.set()
        async for line in response.content:
            obj = json.loads(line).get("object") or {}
            name = (obj.get("metadata") or {}).get("name")
            conditions = (obj.get("status") or {}).get("conditions") or []
            if name in names and any(c["type"] == "Contained" and c["status"] == "True" for c in conditions):
                seen.setdefault(name, time.perf_counter())
                if len(seen) >= len(names):
                    return


async def wait_converged(api: KubeApi, agents: int, timeout: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        items = await api.list(AGENTDEPLOYMENTS, NAMESPACE)
        ready = sum(1 for a in items if (a.get("status") or {}).get("bundle", {}).get("revision") == 1)
        if ready >= agents:
            return time.perf_counter() - start
        await asyncio.sleep(1)
    raise SystemExit(f"only {ready} of {agents} agents converged in {timeout:.0f}s")


async def measure_operator(api: KubeApi, url: str, round_: int, n: int, timeout: float) -> list[float]:
    names = {f"r{round_}-inc-{i}" for i in range(n)}
    seen: dict[str, float] = {}
    ready = asyncio.Event()
    watcher = asyncio.create_task(watch_contained(url, names, seen, ready))
    await ready.wait()
    created: dict[str, float] = {}

    async def create(i: int) -> None:
        name = f"r{round_}-inc-{i}"
        await api.create(AGENTINCIDENTS, NAMESPACE, incident_for(f"agent-{round_ * 100 + i}", name))
        created[name] = time.perf_counter()

    await asyncio.gather(*(create(i) for i in range(n)))
    try:
        await asyncio.wait_for(watcher, timeout)
    except TimeoutError:
        print(f"  ! only {len(seen)} of {n} incidents contained within {timeout:.0f}s", flush=True)
    return [max(0.0, seen[k] - created[k]) for k in seen if k in created]


async def measure_floor(api: KubeApi, namespace: str, n: int) -> list[float]:
    """Every write the operator makes for one incident, issued directly, all incidents at once.

    Control ConfigMap, NetworkPolicy, evidence ConfigMap, the drain, the agent's status, the incident's
    status, and one Event per timeline entry (Opened, two LeverApplied, EvidenceCaptured, Contained).
    Not included: Kopf's own bookkeeping patches (finalizer, progress), and every read.
    """
    from tourniquet.domain import names, network
    from tourniquet.models import AgentDeploymentSpec

    prepared = []
    for i in range(n):
        worker, agent = agent_for(i, namespace)
        await api.create(DEPLOYMENTS, namespace, worker)
        await api.create(AGENTDEPLOYMENTS, namespace, agent)
        spec = AgentDeploymentSpec.model_validate(agent["spec"])
        for body, res in (
            (
                {
                    "metadata": {"name": names.control_configmap(f"agent-{i}")},
                    "data": network.desired_control_data("active", set()),
                },
                CONFIGMAPS,
            ),
            (
                {
                    "metadata": {"name": names.network_policy(f"agent-{i}")},
                    "spec": network.desired_network_policy_spec(spec, set()),
                },
                NETWORKPOLICIES,
            ),
        ):
            await api.create(res, namespace, body)
        prepared.append((i, spec))
    latencies: list[float] = []

    async def contain(i: int, spec: AgentDeploymentSpec) -> None:
        incident = await api.create(
            AGENTINCIDENTS, namespace, {**incident_for(f"agent-{i}", f"inc-{i}"), "metadata": {"name": f"inc-{i}"}}
        )
        start = time.perf_counter()
        agent = f"agent-{i}"
        revoked = {"issue_refund", "reverse_refund"}
        await api.patch(
            CONFIGMAPS,
            namespace,
            names.control_configmap(agent),
            {"data": network.desired_control_data("active", revoked)},
        )
        await api.patch(
            NETWORKPOLICIES,
            namespace,
            names.network_policy(agent),
            [{"op": "replace", "path": "/spec", "value": network.desired_network_policy_spec(spec, revoked)}],
            patch_type="json",
        )
        await api.create(
            CONFIGMAPS,
            namespace,
            {
                "metadata": {"name": names.evidence_configmap(f"inc-{i}")},
                "data": {"agent.json": json.dumps(spec.to_api())},
            },
        )
        await api.patch(
            DEPLOYMENTS,
            namespace,
            f"agent-{i}-worker",
            {"metadata": {"annotations": {"tourniquet.dev/replicas-before-drain": "2"}}, "spec": {"replicas": 0}},
        )
        await api.patch(
            AGENTINCIDENTS,
            namespace,
            incident["metadata"]["name"],
            {"status": {"phase": "Contained"}},
            subresource="status",
        )
        await api.patch(
            AGENTDEPLOYMENTS,
            namespace,
            agent,
            {"status": {"containment": {"incidents": [f"inc-{i}"]}}},
            subresource="status",
        )
        for n, reason in enumerate(("Opened", "LeverApplied", "LeverApplied", "EvidenceCaptured", "Contained")):
            event = {
                "metadata": {"name": f"inc-{i}.{n}"},
                "reason": reason,
                "message": reason,
                "involvedObject": {"kind": "AgentIncident", "name": f"inc-{i}", "namespace": namespace},
            }
            await api.create(EVENTS, namespace, event)
        latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(contain(i, spec) for i, spec in prepared))
    return latencies


async def run(agents: int, sizes: list[int], timeout: float) -> None:
    with ApiServerThread().start() as server, tempfile.TemporaryDirectory() as tmp:
        server.apply_manifests(crdgen.build_crds())
        kubeconfig = str(server.write_kubeconfig(Path(tmp) / "kubeconfig"))
        api = await KubeApi.from_config(kubeconfig)
        floors = {}
        for n in sizes:
            server.apply_manifests([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"floor-{n}"}}])
            floors[n] = await measure_floor(api, f"floor-{n}", n)
            for res in (AGENTINCIDENTS, AGENTDEPLOYMENTS):  # the operator, started next, must not act on them
                for obj in await api.list(res, f"floor-{n}"):
                    await api.delete(res, f"floor-{n}", obj["metadata"]["name"])
        server.apply_manifests([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
        for i in range(agents):
            worker, agent = agent_for(i, NAMESPACE)
            await api.create(DEPLOYMENTS, NAMESPACE, worker)
            await api.create(AGENTDEPLOYMENTS, NAMESPACE, agent)
        env = {**os.environ, "KUBECONFIG": kubeconfig, "PYTHONPATH": str(ROOT / "operator")}
        operator = subprocess.Popen(
            [sys.executable, "-m", "tourniquet.cli", "run", "--liveness", ""],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            took = await wait_converged(api, agents, timeout)
            print(f"{agents} agents pinned and wired by the operator in {took:.1f}s")
            await asyncio.sleep(2)
            print(
                f"{'incidents':>9} {'operator p50':>13} {'p99':>10} {'floor p50':>10} {'p99':>10} {'p99 ratio':>10}"
                f" {'operator CPU':>13}"
            )
            for round_, n in enumerate(sizes):
                cpu = cpu_seconds(operator.pid)
                measured = await measure_operator(api, server.url, round_, n, timeout)
                cpu = cpu_seconds(operator.pid) - cpu
                op50, op99 = percentiles(measured)
                fl50, fl99 = percentiles(floors[n])
                print(
                    f"{n:>9} {op50 * 1000:>10.1f} ms {op99 * 1000:>7.1f} ms {fl50 * 1000:>7.1f} ms "
                    f"{fl99 * 1000:>7.1f} ms {op99 / fl99 if fl99 else float('nan'):>9.1f}x {cpu:>11.1f} s",
                    flush=True,
                )
        finally:
            await api.close()
            operator.terminate()
            operator.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--sizes", default="1,10,100")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    asyncio.run(run(args.agents, [int(s) for s in args.sizes.split(",")], args.timeout))


if __name__ == "__main__":
    main()
