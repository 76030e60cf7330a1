"""Benchmark: AgentIncident created → every lever observed applied, for 1, 10 and 100 simultaneous
incidents across 1,000 agents (SEV1 playbook: revoke tools, capture evidence, drain).

The operator runs as its own process against the API server `--server` names: the realistic emulator
in this process (the default), the real control plane (`make controlplane`), or each in turn (`all`).
Latency is per incident, from the moment its create call returned to the moment a watch sees its
`Contained` condition turn True. After each round its incidents are deleted and released, and the
operator rests `--settle` seconds, so every round starts from rest. The floor is the same writes
(control ConfigMap, NetworkPolicy, evidence ConfigMap, consumer drain, incident status, then the
agent's status and the Events) issued directly against the same server and measured the same way, in
the same run. CPU is shown for the operator process and for the API server (on the emulator this
process: the server plus the small client making incidents and watching them; on the real server
kube-apiserver and etcd).

    python bench/bench_incidents.py [--server emulator|real|all] [--agents 1000] [--sizes 1,10,100,100,100]

A size given more than once is measured in that many rounds (each with its own floor), every round is
printed, and a line gives the median of their p99s, operator and floor. The last line, `summary: ...`,
gives the largest size's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_agentdeployments import agent_for, opened, percentiles, watched_objects  # noqa: E402
from bench_server import (  # noqa: E402
    BenchServer,
    add_arguments,
    chosen,
    cpu_seconds,
    discard_namespace,
    new_namespace,
    started,
)
from tourniquet.adapters.kube import (  # noqa: E402
    AGENTDEPLOYMENTS,
    AGENTINCIDENTS,
    CONFIGMAPS,
    DEPLOYMENTS,
    EVENTS,
    NETWORKPOLICIES,
    PODS,
    ApiError,
    KubeApi,
)
from tourniquet.reconcilers.evidence import MAX_PODS_WITH_LOGS  # noqa: E402
from tourniquet.reconcilers.lane import EVENT_DEFER_SECONDS  # noqa: E402

NAMESPACE = "bench"


def incident_for(agent: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "tourniquet.dev/v1alpha1",
        "kind": "AgentIncident",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"agents": [agent], "severity": "SEV1", "contain": ["revokeTools", "drain"], "class": "tool-misuse"},
    }


async def watch_contained(
    server: BenchServer, namespace: str, names: set[str], seen: dict[str, float], ready: asyncio.Event
) -> None:
    """Record in `seen` when each of `names` is first seen contained. A watch the server ends before then (a busy
    real API server may) is opened again; its replay of the current state can only make a time later, never
    earlier, so a reopened watch never flatters either side."""
    path = f"/apis/tourniquet.dev/v1alpha1/namespaces/{namespace}/agentincidents"
    while True:
        async with contextlib.aclosing(watched_objects(server.url, path, ready, server.ssl)) as objects:
            async for obj in objects:
                name = (obj.get("metadata") or {}).get("name")
                conditions = (obj.get("status") or {}).get("conditions") or []
                if name in names and any(c["type"] == "Contained" and c["status"] == "True" for c in conditions):
                    seen.setdefault(name, time.perf_counter())
                    if len(seen) >= len(names):
                        return
        print(f"  ! the watch of {namespace}'s incidents ended at {len(seen)} of {len(names)}: again", flush=True)


async def wait_converged(api: KubeApi, agents: int, timeout: float) -> float:
    """Seconds until every agent names bundle revision 1 in its status. A list the busy API server does not
    answer in time (1,000 agents converging, and on the real server the controllers making their pods) is
    asked again."""
    start, ready = time.perf_counter(), 0
    while time.perf_counter() - start < timeout:
        try:
            items = await api.list(AGENTDEPLOYMENTS, NAMESPACE)
        except ApiError as error:
            if not error.transient:
                raise
            continue
        ready = sum(1 for a in items if (a.get("status") or {}).get("bundle", {}).get("revision") == 1)
        if ready >= agents:
            return time.perf_counter() - start
        await asyncio.sleep(1)
    raise SystemExit(f"only {ready} of {agents} agents converged in {timeout:.0f}s")


async def measure_operator(
    server: BenchServer, api: KubeApi, round_: int, offset: int, n: int, timeout: float
) -> list[float]:
    """Incidents on agents offset..offset+n-1 (agents no earlier round touched), all created at once."""
    names = {f"r{round_}-inc-{i}" for i in range(n)}
    seen: dict[str, float] = {}
    ready = asyncio.Event()
    watcher = await opened(watch_contained(server, NAMESPACE, names, seen, ready), ready)
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


async def clear_events(api: KubeApi, namespace: str) -> None:
    """Delete every Event in the namespace, so that each burst starts with none for the evidence's lists to scan.

    The operator lists an agent's Events by `involvedObject.name`, which no API server indexes: each list reads
    every Event in the namespace (on the real server, from etcd: about 7 ms with 100 Events, 70-90 ms with
    1,500, on this machine). A cluster keeps them an hour (--event-ttl); these figures are with none."""
    await api.request("DELETE", EVENTS.path(namespace))


async def release_round(server: BenchServer, api: KubeApi, round_: int, n: int, timeout: float) -> None:
    """Delete a round's incidents and wait until the operator has released them all, then their Events,
    so that every round starts from rest like the first: no open incident re-asserted in the background,
    no controller re-creating the pods of the restored workers, and no Events for the evidence's lists to
    scan."""
    for i in range(n):
        await api.delete(AGENTINCIDENTS, NAMESPACE, f"r{round_}-inc-{i}")
    start = time.perf_counter()
    while await api.list(AGENTINCIDENTS, NAMESPACE):
        if time.perf_counter() - start > timeout:
            raise SystemExit(f"round {round_}: incidents still held by their finalizers after {timeout:.0f}s")
        await asyncio.sleep(0.5)
    await asyncio.sleep(EVENT_DEFER_SECONDS + 0.5)  # the release's Events are posted after it
    await server.at_rest(api)
    await clear_events(api, NAMESPACE)


@dataclass
class EvidenceReads:
    """What the operator's evidence reads of one agent besides what its pass already holds: the agent's pods,
    their logs, and the Events of the agent, its consumer and those pods. None on the emulator (it runs no
    controllers); on the real server, the pods the controllers made and their Events."""

    pods: list[dict[str, Any]]
    events: list[dict[str, Any]]
    logs: dict[str, str]
    errors: list[str]


async def evidence_reads(api: KubeApi, namespace: str, agent: str, worker: dict[str, Any]) -> EvidenceReads:
    """The reads as the operator's capture makes them (reconcilers/evidence.py), before the floor's burst."""
    labels = worker["spec"]["selector"]["matchLabels"]
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    pods = await api.list(PODS, namespace, label_selector=selector)
    reads = EvidenceReads(pods, [], {}, [])
    for pod in pods[:MAX_PODS_WITH_LOGS]:
        pod_name = pod["metadata"]["name"]
        try:
            reads.logs[pod_name] = await api.request_text(
                PODS.path(namespace, pod_name, "log"), {"tailLines": 200, "allContainers": "true"}
            )
        except ApiError as error:
            reads.errors.append(f"logs of pod {pod_name}: {error}")
    for involved in [agent, worker["metadata"]["name"], *(p["metadata"]["name"] for p in pods[:MAX_PODS_WITH_LOGS])]:
        reads.events += await api.list(EVENTS, namespace, field_selector=f"involvedObject.name={involved}")
    return reads


@dataclass
class FloorWrites:
    """What the operator writes to contain one incident, prepared before the floor's burst."""

    control: dict[str, str]
    policy: dict[str, Any]
    evidence: dict[str, Any]
    status: dict[str, Any]


def _floor_writes(
    namespace: str,
    i: int,
    agent: dict[str, Any],
    worker: dict[str, Any],
    spec: Any,
    revoked: set[str],
    reads: EvidenceReads,
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
            pods=reads.pods,
            events=reads.events,
            logs=reads.logs,
            errors=reads.errors,
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


async def measure_floor(server: BenchServer, api: KubeApi, namespace: str, n: int) -> list[float]:
    """Every write the operator makes to contain one incident, issued directly, all incidents at once.

    The control ConfigMap and the NetworkPolicy (together), the evidence ConfigMap, the drain, then the
    incident's status with `Contained=True`; latency is taken exactly as for the operator: from the
    incident's create call returning to a watch seeing `Contained`. The bodies are the operator's: the
    evidence as it builds it (agent, bundle, consumer, manifest, and on the real server the pods and Events
    its reads would find, read before the burst) and the status as its pass computes it (levers, timeline,
    timings, conditions), prepared before
    the burst. As the operator does, the agent's status and the Event for each timeline entry (Opened, two
    LeverApplied, EvidenceCaptured, Contained) follow once every incident is contained, so the floor
    carries no paperwork in its burst. Not included: every read (the evidence needs pods, events and logs;
    the drain needs the replicas to record), computing the bodies, and Kopf's own work.
    """
    from tourniquet.domain import names, network
    from tourniquet.models import AgentDeploymentSpec

    revoked = {"issue_refund", "reverse_refund"}
    agents = []
    for i in range(n):
        worker, agent = agent_for(i, namespace)
        await api.create(DEPLOYMENTS, namespace, worker)
        await api.create(AGENTDEPLOYMENTS, namespace, agent)
        agents.append((worker, agent))
    await server.at_rest(api)  # the workers' pods, on the real server
    await clear_events(api, namespace)  # as before each of the operator's rounds
    prepared = []
    for i, (worker, agent) in enumerate(agents):
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
        reads = await evidence_reads(api, namespace, f"agent-{i}", worker)
        prepared.append(_floor_writes(namespace, i, agent, worker, spec, revoked, reads))
    incident_names = {f"inc-{i}" for i in range(n)}
    server.settle_heap()
    seen: dict[str, float] = {}
    ready = asyncio.Event()
    watcher = await opened(watch_contained(server, namespace, incident_names, seen, ready), ready)
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


async def run(server: BenchServer, agents: int, sizes: list[int], timeout: float, settle: float) -> str:
    """Measure every round on `server`, the floors first; returns the summary line."""
    api = await KubeApi.from_config(server.kubeconfig)
    try:
        floors = []
        for round_, n in enumerate(sizes):
            floor_ns = f"floor-{round_}"
            await new_namespace(api, floor_ns)
            floors.append(await measure_floor(server, api, floor_ns, n))
            await discard_namespace(api, floor_ns)  # the operator, started next, must not act on its agents
        await new_namespace(api, NAMESPACE)
        for i in range(agents):
            worker, agent = agent_for(i, NAMESPACE)
            await api.create(DEPLOYMENTS, NAMESPACE, worker)
            await api.create(AGENTDEPLOYMENTS, NAMESPACE, agent)
        operator = server.start_operator()
        try:
            took = await wait_converged(api, agents, timeout)
            print(f"{agents} agents pinned and wired by the operator in {took:.1f}s")
            await server.at_rest(api)  # the workers' pods, rolled to the wired template, on the real server
            await clear_events(api, NAMESPACE)  # the wiring's, and on the real server the controllers'
            cpu, server_cpu = cpu_seconds(operator.pid), server.cpu()
            await asyncio.sleep(settle)
            cpu, server_cpu = cpu_seconds(operator.pid) - cpu, server.cpu() - server_cpu
            if settle:
                print(
                    f"at rest, {settle:.0f}s later: operator CPU {cpu / settle:.2f} s/s,"
                    f" API server CPU {server_cpu / settle:.2f} s/s"
                )
            print(
                f"{'incidents':>9} {'operator p50':>13} {'p99':>10} {'floor p50':>10} {'p99':>10} {'p99 ratio':>10}"
                f" {'operator CPU':>13} {server.cpu_label:>21}"
            )
            results: dict[int, list[tuple[float, float]]] = {}  # size -> (operator p99, floor p99) per round
            missing: dict[int, int] = {}  # size -> incidents never seen contained, over its rounds
            for round_, n in enumerate(sizes):
                server.settle_heap()
                cpu, server_cpu = cpu_seconds(operator.pid), server.cpu()
                measured = await measure_operator(server, api, round_, sum(sizes[:round_]), n, timeout)
                cpu, server_cpu = cpu_seconds(operator.pid) - cpu, server.cpu() - server_cpu
                missing[n] = missing.get(n, 0) + n - len(measured)
                await release_round(server, api, round_, n, timeout)
                await asyncio.sleep(settle)
                op50, op99 = percentiles(measured)
                fl50, fl99 = percentiles(floors[round_])
                results.setdefault(n, []).append((op99, fl99))
                print(
                    f"{n:>9} {op50 * 1000:>10.1f} ms {op99 * 1000:>7.1f} ms {fl50 * 1000:>7.1f} ms "
                    f"{fl99 * 1000:>7.1f} ms {op99 / fl99 if fl99 else float('nan'):>9.1f}x {cpu:>11.2f} s"
                    f" {server_cpu:>19.2f} s",
                    flush=True,
                )
        finally:
            operator.terminate()
            operator.wait(timeout=30)
    finally:
        await api.close()
    for n, rounds in results.items():
        if len(rounds) > 1:
            print(f"{n} at once, {median_of(rounds)}")
    largest = max(results)
    lost = f"; {missing[largest]} incidents never seen contained" if missing[largest] else ""
    return (
        f"summary: incidents on the {server.label} ({agents} agents): {largest} at once,"
        f" {median_of(results[largest])}{lost}"
    )


def median_of(rounds: list[tuple[float, float]]) -> str:
    """The median of the rounds' p99s, operator and floor (one round: its own), and each round's ratio. A single
    burst's p99 on a shared 2-core machine moves by a third from one round to the next, the floor's too."""
    op99 = statistics.median(op for op, _ in rounds)
    fl99 = statistics.median(fl for _, fl in rounds)
    which = f"median of {len(rounds)} rounds" if len(rounds) > 1 else "1 round"
    each = f" (rounds: {', '.join(f'{op / fl:.1f}x' for op, fl in rounds if fl)})" if len(rounds) > 1 else ""
    return (
        f"{which}: operator p99 {op99 * 1000:.1f} ms, floor p99 {fl99 * 1000:.1f} ms,"
        f" p99 ratio {op99 / fl99 if fl99 else float('nan'):.1f}x{each}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--sizes", default="1,10,100,100,100")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--settle", type=float, default=5, help="seconds at rest before each round")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    summaries = []
    for kind in chosen(args.server):
        # An API server keeps the latest version of each object, not its history (the sandbox bounds it alike).
        with started(kind, args.rest, request_log_limit=10_000, object_history_limit=2) as server:
            server.operator_log = args.operator_log
            print(f"AgentIncident benchmark on the {server.label}", flush=True)
            summaries.append(asyncio.run(run(server, args.agents, sizes, args.timeout, args.settle)))
            print(summaries[-1], flush=True)
    if len(summaries) > 1:
        print("\n".join(summaries))


if __name__ == "__main__":
    main()
