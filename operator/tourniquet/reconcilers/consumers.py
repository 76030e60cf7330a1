"""An agent's consumers: wiring them to a bundle revision, and unwiring them (pure planning in domain.wiring).

A consumer is one agent's: another agent naming it is refused, and never unwires what the other wires.
"""

from __future__ import annotations

import logging
from typing import Any

from tourniquet.adapters.kube import AGENTDEPLOYMENTS, WORKLOADS, ApiError, KubeApi
from tourniquet.domain import agent as decide
from tourniquet.domain import wiring

log = logging.getLogger(__name__)


async def claimed_by_others(
    api: KubeApi, namespace: str, name: str, consumers: dict[tuple[str, str], dict[str, Any] | None]
) -> list[str]:
    """A consumer another agent wires (and still names) is that agent's: one per problem. Read only when a
    consumer's template names another agent."""
    problems = []
    for (kind, cname), workload in consumers.items():
        owner = wiring.wired_agent(workload) if workload else None
        if owner is None or owner == name:
            continue
        other = await api.get_or_none(AGENTDEPLOYMENTS, namespace, owner)
        if other is not None and wiring.names_consumer(other, kind, cname):
            problems.append(wiring.claim_problem(kind, cname, owner))
    return problems


async def wire(
    api: KubeApi, namespace: str, name: str, kind: str, workload: dict[str, Any], patch: dict[str, Any]
) -> dict[str, Any]:
    """The wiring patch, guarded by the consumer's resourceVersion: two agents naming one consumer cannot both
    wire it. On a conflict the consumer is read again; wired by another agent meanwhile, the pass fails (409)
    and the next one refuses this agent."""
    cname = workload["metadata"]["name"]
    for attempt in range(1, 4):
        guarded = {**patch, "metadata": {"resourceVersion": workload["metadata"].get("resourceVersion")}}
        try:
            return await api.patch(WORKLOADS[kind], namespace, cname, guarded, patch_type="strategic")
        except ApiError as error:
            if not error.conflict or attempt == 3:
                raise
        workload = await api.get(WORKLOADS[kind], namespace, cname)
        owner = wiring.wired_agent(workload)
        if owner not in (None, name):
            raise ApiError(409, "Conflict", wiring.claim_problem(kind, cname, owner))
    raise AssertionError("unreachable")


async def unwire_agent_deployment(api: KubeApi, body: dict[str, Any]) -> list[str]:
    """Remove the bundle and control mounts from every consumer (the agent is being deleted); a consumer
    another agent wires is that agent's and is left alone."""
    meta = body["metadata"]
    namespace = meta["namespace"]
    spec, _ = decide.parse_spec(body.get("spec"))
    actions = []
    for ref in spec.consumers if spec else []:
        workload = await api.get_or_none(WORKLOADS[ref.kind.value], namespace, ref.name)
        if workload is None or wiring.wired_agent(workload) not in (None, meta["name"]):
            continue
        patch = wiring.plan_unwiring_patch(workload)
        if patch is not None:
            await api.patch(WORKLOADS[ref.kind.value], namespace, ref.name, patch, patch_type="strategic")
            actions.append(f"Unwired {ref.kind.value} {ref.name} from agent {meta['name']}")
    for action in actions:
        log.info("%s", action)
    return actions
