"""The control ConfigMap: the flags the runtime honours before each tool call (shadow's `mode`, revokeTools'
`revokedTools`, ...), written at once for every lever that has one.

`mode: shadow` makes the runtime record side-effecting actions instead of executing them;
`revokedTools` makes it refuse those tools. The runtime follows the ConfigMap through the API
(seconds); the mounted copy is only a fallback (the kubelet syncs it in about a minute).
"""

from __future__ import annotations

from typing import Any

from tourniquet.adapters.kube import CONFIGMAPS
from tourniquet.domain import names, network
from tourniquet.levers.common import LeverContext, LeverObservation, converge
from tourniquet.models import Lever


async def apply_control(ctx: LeverContext, data: dict[str, str]) -> None:
    """Make the control ConfigMap carry `data` (every lever's flags) in one write; ctx.control: as last seen, or
    None to read it (see converge), then as stored."""
    api, namespace, cm_name = ctx.api, ctx.namespace, names.control_configmap(ctx.agent)

    def create() -> Any:
        labels = network.labels_for(ctx.agent, names.COMPONENT_CONTROL)
        body = names.owned("v1", "ConfigMap", cm_name, namespace, ctx.owner, labels=labels, data=data)
        return api.create_or_get(CONFIGMAPS, namespace, body)

    ctx.control, done = await converge(
        ctx.control,
        lambda current: _data_patch(current, data),
        write=lambda patch: api.patch(CONFIGMAPS, namespace, cm_name, patch),
        read=lambda: api.get_or_none(CONFIGMAPS, namespace, cm_name),
        create=create,
    )
    if done == "created":
        ctx.actions.append(f"Created control ConfigMap {cm_name} (mode {ctx.containment.mode})")
    elif done == "patched":
        ctx.actions.append(_set_message(cm_name, data))


def _data_patch(current: dict[str, Any], data: dict[str, str]) -> dict[str, Any] | None:
    return {"data": data} if {k: (current.get("data") or {}).get(k) for k in data} != data else None


def _set_message(cm_name: str, data: dict[str, str]) -> str:
    flags = {"mode": "mode", "revokedTools": "revoked"}
    return f"Set control ConfigMap {cm_name}: " + ", ".join(f"{flags.get(k, k)} {v}" for k, v in data.items())


def observe_shadow(ctx: LeverContext) -> LeverObservation:
    shadow_on = ((ctx.control or {}).get("data") or {}).get("mode") == "shadow"
    return LeverObservation(
        Lever.SHADOW,
        shadow_on,
        "mode: shadow set in the control ConfigMap; the agent runtime follows it within seconds"
        if shadow_on
        else "mode: active",
        ctx.containment.holders(Lever.SHADOW),
    )
