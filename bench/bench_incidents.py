"""Benchmark: AgentIncident created → every lever observed applied, for 1, 10 and 100 simultaneous
incidents across 1,000 agents (SEV1 playbook: revoke tools, capture evidence, drain).

The operator runs as its own process against the realistic emulator in this process. Latency is
per incident, from the moment its create call returned to the moment a watch sees its
`Contained` condition turn True. After each round its incidents are deleted and released, and the
operator rests `--settle` seconds, so every round starts from rest. The floor is the same writes
(control ConfigMap, NetworkPolicy, evidence ConfigMap, consumer drain, incident status, then the
agent's status and the Events) issued directly and measured the same way, in the same run. CPU is shown for the
operator process and for this one (the API server, plus the small client making incidents and
watching them).

    python bench/bench_incidents.py [--agents 1000] [--sizes 1,10,100,100,100]

A size given more than once is measured in that many rounds (each with its own floor), every round is
printed, and a last line gives the median of their p99s, operator and floor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_agentdeployments import agent_for, cpu_seconds, percentiles, watched_objects  # noqa: E402
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
from tourniquet.reconcilers.events import EVENT_DEFER_SECONDS  # noqa: E402
from tourniquet.sandbox.server import ApiServerThread  # noqa: E402

NAMESPACE = "bench"


def settle_api_server_heap() -> None:
    """Before each measured burst: the emulated API server (this process) collects and freezes its heap.

    A real API server is not a Python process; without this, a full collection over the emulator's
    objects (thousands with 1,000 agents, far fewer in a floor round) lands in some bursts and not others.
    """
    gc.collect()
    gc.freeze()


def incident_for(agent: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "tourniquet.dev/v1alpha1",
        "kind": "AgentIncident",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"agents": [agent], "severity": "SEV1", "contain": ["revokeTools", "drain"], "class": "tool-misuse"},
    }


async def watch_contained(
    url: str, namespace: str, names: set[str], seen: dict[str, float], ready: asyncio.Event
) -> None:
    path = f"/apis/tourniquet.dev/v1alpha1/namespaces/{namespace}/agentincidents"
    async with contextlib.aclosing(watched_objects(url, path, ready)) as objects:
        async for obj in objects:
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


async def measure_operator(api: KubeApi, url: str, round_: int, offset: int, n: int, timeout: float) -> list[float]:
    """Incidents on agents offset..offset+n-1 (agents no earlier round touched), all created at once."""
    names = {f"r{round_}-inc-{i}" for i in range(n)}
    seen: dict[str, float] = {}
    ready = asyncio.Event()
    watcher = asyncio.create_task(watch_contained(url, NAMESPACE, names, seen, ready))
    await ready.wait()
    created: dict[str, float] = {}

    async def create(i: int) -> None:
        name = f"r{round_}-inc-{i}"
        await api.create(AGENTINCIDENTS, NAMESPACE, incident_for(f"agent-{offset + i}", name))
        created[name] = time.perf_counter()

    await asyncio.gather(*(create(i) for i in range(n)))
    try:
        await asyncio.wait_for(watcher, timeout)
    except TimeoutError:
        print(f"  ! only {len(seen)} of {n} incidents contained within {timeout:.0f}s", flush=True)
    return [max(0.0, seen[k] - created[k]) for k in seen if k in created]


async def release_round(api: KubeApi, round_: int, n: int, timeout: float) -> None:
    """Delete a round's incidents and wait until the operator has released them all, then their Events,
    so that every round starts from rest like the first: no open incident re-asserted in the background,
    and no more Events for the evidence's lists to scan (a cluster expires them after an hour; the
    emulator scans them in Python)."""
    for i in range(n):
        await api.delete(AGENTINCIDENTS, NAMESPACE, f"r{round_}-inc-{i}")
    start = time.perf_counter()
    while await api.list(AGENTINCIDENTS, NAMESPACE):
        if time.perf_counter() - start > timeout:
            raise SystemExit(f"round {round_}: incidents still held by their finalizers after {timeout:.0f}s")
        await asyncio.sleep(0.5)
    await asyncio.sleep(EVENT_DEFER_SECONDS + 0.5)  # the release's Events are posted after it
    for event in await api.list(EVENTS, NAMESPACE):
        await api.delete(EVENTS, NAMESPACE, event["metadata"]["name"])


@dataclass
class FloorWrites:
    """What the operator writes to contain one incident, prepared before the floor's burst."""

    control: dict[str, str]
    policy: dict[str, Any]
    evidence: dict[str, Any]
    status: dict[str, Any]


def _floor_writes(
    namespace: str, i: int, agent: dict[str, Any], worker: dict[str, Any], spec: Any, revoked: set[str]
) -> FloorWrites:
    """The bodies the operator's pass would write, from its own pure functions."""
    from tourniquet.domain import names, network
    from tourniquet.domain.evidence import EvidenceParts, build_evidence, evidence_configmap, evidence_status
    from tourniquet.domain.incident import LeverSeen, incident_status, micro_time

    name, incident, now = f"agent-{i}", f"inc-{i}", datetime.now(UTC)
    captured_at = micro_time(now)
    bundle = json.dumps({name: json.dumps(agent["spec"].get("bundle") or {}, sort_keys=True)})
    data, truncated = build_evidence(
        EvidenceParts(
            agent={name: {"spec": agent["spec"], "status": None}},
            bundle={"bundle.json": bundle},
            consumers=[
                {"kind": "Deployment", "name": worker["metadata"]["name"], "spec": worker["spec"], "status": None}
            ],
            pods=[],
            events=[],
        ),
        captured_at=captured_at,
    )
    placeholder = names.owner_reference("AgentIncident", incident, "")  # the uid is known once it is created
    evidence = evidence_configmap(
        namespace, incident, placeholder, agents=[name], data=data, truncated=truncated, captured_at=captured_at
    )
    drained = f"{worker['metadata']['name']} 2 → 0 replicas, scaled down just now"
    status = incident_status(
        {},
        start=(micro_time(now), "openedAt"),
        generation=1,
        agents=[name],
        levers=[
            LeverSeen(name, "revokeTools", True, network.describe_revocation(spec, revoked)),
            LeverSeen(name, "drain", True, drained),
        ],
        resolved=False,
        evidence=evidence_status(evidence),
        notes=[],
        now=now,
    )
    return FloorWrites(
        network.desired_control_data("active", revoked),
        network.desired_network_policy_spec(spec, revoked),
        evidence,
        status,
    )


async def measure_floor(api: KubeApi, url: str, namespace: str, n: int) -> list[float]:
    """Every write the operator makes to contain one incident, issued directly, all incidents at once.

    The control ConfigMap and the NetworkPolicy (together), the evidence ConfigMap, the drain, then the
    incident's status with `Contained=True`; latency is taken exactly as for the operator: from the
    incident's create call returning to a watch seeing `Contained`. The bodies are the operator's: the
    evidence as it builds it (agent, bundle, consumer, manifest; this floor has no pods, Events or logs to
    read) and the status as its pass computes it (levers, timeline, timings, conditions), prepared before
    the burst. As the operator does, the agent's status and the Event for each timeline entry (Opened, two
    LeverApplied, EvidenceCaptured, Contained) follow once every incident is contained, so the floor
    carries no paperwork in its burst. Not included: every read (the evidence needs pods, events and logs;
    the drain needs the replicas to record), computing the bodies, and Kopf's own work.
    """
    from tourniquet.domain import names, network
    from tourniquet.models import AgentDeploymentSpec

    revoked = {"issue_refund", "reverse_refund"}
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
        prepared.append(_floor_writes(namespace, i, agent, worker, spec, revoked))
    incident_names = {f"inc-{i}" for i in range(n)}
    settle_api_server_heap()
    seen: dict[str, float] = {}
    ready = asyncio.Event()
    watcher = asyncio.create_task(watch_contained(url, namespace, incident_names, seen, ready))
    await ready.wait()
    created: dict[str, float] = {}

    async def contain(i: int, writes: FloorWrites) -> None:
        agent, incident = f"agent-{i}", f"inc-{i}"
        made = await api.create(
            AGENTINCIDENTS, namespace, {**incident_for(agent, incident), "metadata": {"name": incident}}
        )
        created[incident] = time.perf_counter()
        await asyncio.gather(
            api.patch(CONFIGMAPS, namespace, names.control_configmap(agent), {"data": writes.control}),
            api.patch(
                NETWORKPOLICIES,
                namespace,
                names.network_policy(agent),
                [{"op": "replace", "path": "/spec", "value": writes.policy}],
                patch_type="json",
            ),
        )
        owner = names.owner_reference("AgentIncident", incident, made["metadata"]["uid"])
        evidence = {**writes.evidence, "metadata": {**writes.evidence["metadata"], "ownerReferences": [owner]}}
        await api.create(CONFIGMAPS, namespace, evidence)
        await api.patch(
            DEPLOYMENTS,
            namespace,
            f"{agent}-worker",
            {"metadata": {"annotations": {"tourniquet.dev/replicas-before-drain": "2"}}, "spec": {"replicas": 0}},
        )
        await api.patch(AGENTINCIDENTS, namespace, incident, {"status": writes.status}, subresource="status")

    await asyncio.gather(*(contain(i, writes) for i, writes in enumerate(prepared)))
    try:
        await asyncio.wait_for(watcher, 60)
    except TimeoutError:
        print(f"  ! the floor saw only {len(seen)} of {n} incidents contained", flush=True)
    for i in range(n):
        await api.patch(
            AGENTDEPLOYMENTS,
            namespace,
            f"agent-{i}",
            {"status": {"containment": {"incidents": [f"inc-{i}"]}}},
            subresource="status",
        )
        for k, reason in enumerate(("Opened", "LeverApplied", "LeverApplied", "EvidenceCaptured", "Contained")):
            event = {
                "metadata": {"name": f"inc-{i}.{k}"},
                "reason": reason,
                "message": reason,
                "involvedObject": {"kind": "AgentIncident", "name": f"inc-{i}", "namespace": namespace},
            }
            await api.create(EVENTS, namespace, event)
    return [max(0.0, seen[k] - created[k]) for k in seen if k in created]


async def run(agents: int, sizes: list[int], timeout: float, settle: float) -> None:
    # An API server keeps the latest version of each object, not its history (the sandbox bounds it alike).
    with (
        ApiServerThread(request_log_limit=10_000, object_history_limit=2).start() as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        server.apply_manifests(crdgen.build_crds())
        kubeconfig = str(server.write_kubeconfig(Path(tmp) / "kubeconfig"))
        api = await KubeApi.from_config(kubeconfig)
        floors = []
        for round_, n in enumerate(sizes):
            floor_ns = f"floor-{round_}"
            server.apply_manifests([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": floor_ns}}])
            floors.append(await measure_floor(api, server.url, floor_ns, n))
            for res in (AGENTINCIDENTS, AGENTDEPLOYMENTS):  # the operator, started next, must not act on them
                for obj in await api.list(res, floor_ns):
                    await api.delete(res, floor_ns, obj["metadata"]["name"])
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
            cpu, server_cpu = cpu_seconds(operator.pid), cpu_seconds(os.getpid())
            await asyncio.sleep(settle)
            cpu, server_cpu = cpu_seconds(operator.pid) - cpu, cpu_seconds(os.getpid()) - server_cpu
            print(
                f"at rest, {settle:.0f}s later: operator CPU {cpu / settle:.2f} s/s,"
                f" API server CPU {server_cpu / settle:.2f} s/s"
            )
            print(
                f"{'incidents':>9} {'operator p50':>13} {'p99':>10} {'floor p50':>10} {'p99':>10} {'p99 ratio':>10}"
                f" {'operator CPU':>13} {'API server CPU':>15}"
            )
            results: dict[int, list[tuple[float, float]]] = {}  # size -> (operator p99, floor p99) per round
            for round_, n in enumerate(sizes):
                settle_api_server_heap()
                cpu, server_cpu = cpu_seconds(operator.pid), cpu_seconds(os.getpid())
                measured = await measure_operator(api, server.url, round_, sum(sizes[:round_]), n, timeout)
                cpu, server_cpu = cpu_seconds(operator.pid) - cpu, cpu_seconds(os.getpid()) - server_cpu
                await release_round(api, round_, n, timeout)
                await asyncio.sleep(settle)
                op50, op99 = percentiles(measured)
                fl50, fl99 = percentiles(floors[round_])
                results.setdefault(n, []).append((op99, fl99))
                print(
                    f"{n:>9} {op50 * 1000:>10.1f} ms {op99 * 1000:>7.1f} ms {fl50 * 1000:>7.1f} ms "
                    f"{fl99 * 1000:>7.1f} ms {op99 / fl99 if fl99 else float('nan'):>9.1f}x {cpu:>11.2f} s"
                    f" {server_cpu:>13.2f} s",
                    flush=True,
                )
            print_medians(results)
        finally:
            await api.close()
            operator.terminate()
            operator.wait(timeout=30)


def print_medians(results: dict[int, list[tuple[float, float]]]) -> None:
    """One line per size measured more than once: the median of its rounds' p99s, operator and floor. A single
    burst's p99 on a shared 2-core machine moves by a third from one round to the next, the floor's too."""
    for n, rounds in results.items():
        if len(rounds) < 2:
            continue
        op99 = statistics.median(op for op, _ in rounds)
        fl99 = statistics.median(fl for _, fl in rounds)
        ratios = ", ".join(f"{op / fl:.1f}x" for op, fl in rounds if fl)
        print(
            f"{n} at once, median of {len(rounds)} rounds: operator p99 {op99 * 1000:.1f} ms, floor p99"
            f" {fl99 * 1000:.1f} ms, ratio {op99 / fl99 if fl99 else float('nan'):.1f}x (rounds: {ratios})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--sizes", default="1,10,100,100,100")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--settle", type=float, default=5, help="seconds at rest before each round")
    args = parser.parse_args()
    asyncio.run(run(args.agents, [int(s) for s in args.sizes.split(",")], args.timeout, args.settle))


if __name__ == "__main__":
    main()
