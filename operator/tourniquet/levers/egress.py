"""Tool revocation at the network: the agent's egress NetworkPolicy, owned whole by the operator.

A NetworkPolicy change may not cut connections that are already open (it depends on the CNI), so
revocation is also written to the control ConfigMap, and the observation says so plainly.
"""

from __future__ import annotations

from typing import Any

from tourniquet.adapters.kube import NETWORKPOLICIES
from tourniquet.domain import names, network
from tourniquet.levers.common import LeverContext, LeverObservation, converge
from tourniquet.models import Lever


async def apply_policy(ctx: LeverContext) -> None:
    """ctx.policy: the NetworkPolicy as last seen, or None to read it (see converge), then as stored."""
    api, namespace, agent = ctx.api, ctx.namespace, ctx.agent
    desired = network.desired_network_policy_spec(ctx.spec, ctx.containment.revoked_tools)
    np_name = names.network_policy(agent)

    def plan(current: dict[str, Any]) -> list[dict[str, Any]] | None:
        # The spec is replaced whole: the policy becomes exactly the desired one, nothing merged in.
        return [{"op": "replace", "path": "/spec", "value": desired}] if current.get("spec") != desired else None

    def create() -> Any:
        labels = network.labels_for(agent, "egress")
        body = names.owned(
            "networking.k8s.io/v1", "NetworkPolicy", np_name, namespace, ctx.owner, labels=labels, spec=desired
        )
        return api.create_or_get(NETWORKPOLICIES, namespace, body)

    ctx.policy, done = await converge(
        ctx.policy,
        plan,
        write=lambda patch: api.patch(NETWORKPOLICIES, namespace, np_name, patch, patch_type="json"),
        read=lambda: api.get_or_none(NETWORKPOLICIES, namespace, np_name),
        create=create,
    )
    if done == "created":
        ctx.actions.append(f"Created NetworkPolicy {np_name} with {len(desired['egress'])} egress rule(s)")
    elif done == "patched":
        ctx.actions.append(f"Set NetworkPolicy {np_name} to {len(desired['egress'])} egress rule(s)")


def observe_revocation(ctx: LeverContext) -> LeverObservation:
    """Enforced when the control ConfigMap lists the tools and the NetworkPolicy no longer lets them out."""
    listed = network.revoked_tools_listed((ctx.control or {}).get("data") or {})
    revoked = ctx.containment.revoked_tools
    desired_egress = network.desired_egress(ctx.spec, revoked)
    policy = ctx.policy or {}
    enforced = bool(revoked) and revoked <= listed and (policy.get("spec") or {}).get("egress") == desired_egress
    if enforced:
        detail = network.describe_revocation(ctx.spec, revoked)
    elif not revoked:
        detail = "no tool revoked"
    else:
        detail = f"not yet enforced: revokedTools lists {sorted(listed)}, the NetworkPolicy does not match"
    return LeverObservation(Lever.REVOKE_TOOLS, enforced, detail, ctx.containment.holders(Lever.REVOKE_TOOLS))
