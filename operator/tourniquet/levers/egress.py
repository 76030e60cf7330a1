"""Tool revocation at the network: the agent's egress NetworkPolicy, owned whole by the operator.

A NetworkPolicy change may not cut connections that are already open (it depends on the CNI), so
revocation is also written to the control ConfigMap, and the observation says so plainly.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from tourniquet.adapters.kube import NETWORKPOLICIES, KubeApi
from tourniquet.domain import names, network
from tourniquet.domain.containment import Containment
from tourniquet.levers.common import LeverObservation, remembered_write
from tourniquet.models import AgentDeploymentSpec, Lever


async def apply_policy(
    api: KubeApi,
    namespace: str,
    agent: str,
    spec: AgentDeploymentSpec,
    observed: dict[str, Any] | None,
    containment: Containment,
    owner: dict[str, Any],
    actions: list[str],
    *,
    remembered: bool = False,
) -> dict[str, Any]:
    """`remembered`: `observed` is this process's last copy, not read now (see remembered_write)."""
    desired = network.desired_network_policy_spec(spec, containment.revoked_tools)
    np_name = names.network_policy(agent)
    set_message = f"Set NetworkPolicy {np_name} to {len(desired['egress'])} egress rule(s)"

    def plan(current: dict[str, Any]) -> list[dict[str, Any]] | None:
        # The spec is replaced whole: the policy becomes exactly the desired one, nothing merged in.
        return [{"op": "replace", "path": "/spec", "value": desired}] if current.get("spec") != desired else None

    def write(patch: Any) -> Awaitable[dict[str, Any]]:
        return api.patch(NETWORKPOLICIES, namespace, np_name, patch, patch_type="json")

    if remembered:
        written, observed = await remembered_write(
            observed, plan, write, read=lambda: api.get_or_none(NETWORKPOLICIES, namespace, np_name)
        )
        if written is not None:
            actions.append(set_message)
            return written
    if observed is None:
        body = names.owned(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            np_name,
            namespace,
            owner,
            labels=network.labels_for(agent, "egress"),
            spec=desired,
        )
        observed, created = await api.create_or_get(NETWORKPOLICIES, namespace, body)
        if created:
            actions.append(f"Created NetworkPolicy {np_name} with {len(desired['egress'])} egress rule(s)")
            return observed
    patch = plan(observed)
    if patch is not None:
        result = await write(patch)
        actions.append(set_message)
        return result
    return observed


def observe_revocation(
    spec: AgentDeploymentSpec, control: dict[str, Any], policy: dict[str, Any], containment: Containment
) -> LeverObservation:
    listed = network.revoked_tools_listed(control.get("data") or {})
    revoked = containment.revoked_tools
    desired_egress = network.desired_egress(spec, revoked)
    enforced = bool(revoked) and revoked <= listed and (policy.get("spec") or {}).get("egress") == desired_egress
    if enforced:
        detail = network.describe_revocation(spec, revoked)
    elif not revoked:
        detail = "no tool revoked"
    else:
        detail = f"not yet enforced: revokedTools lists {sorted(listed)}, the NetworkPolicy does not match"
    return LeverObservation(Lever.REVOKE_TOOLS, enforced, detail, containment.holders(Lever.REVOKE_TOOLS))
