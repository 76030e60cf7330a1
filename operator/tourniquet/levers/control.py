"""The shadow and revocation flags: the agent's control ConfigMap, honoured by the runtime before each tool call.

`mode: shadow` makes the runtime record side-effecting actions instead of executing them;
`revokedTools` makes it refuse those tools. The runtime follows the ConfigMap through the API
(seconds); the mounted copy is only a fallback (the kubelet syncs it in about a minute).
"""

from __future__ import annotations

from typing import Any

from tourniquet.adapters.kube import CONFIGMAPS, KubeApi
from tourniquet.domain import names, network
from tourniquet.domain.containment import Containment
from tourniquet.levers.common import LeverObservation, converge
from tourniquet.models import Lever


async def apply_control(
    api: KubeApi,
    namespace: str,
    agent: str,
    observed: dict[str, Any] | None,
    containment: Containment,
    owner: dict[str, Any],
    actions: list[str],
) -> dict[str, Any]:
    """`observed`: the control ConfigMap as last seen, or None to read it (see converge)."""
    data = network.desired_control_data(containment.mode, containment.revoked_tools)
    cm_name = names.control_configmap(agent)

    def create() -> Any:
        labels = network.labels_for(agent, names.COMPONENT_CONTROL)
        body = names.owned("v1", "ConfigMap", cm_name, namespace, owner, labels=labels, data=data)
        return api.create_or_get(CONFIGMAPS, namespace, body)

    stored, done = await converge(
        observed,
        lambda current: _data_patch(current, data),
        write=lambda patch: api.patch(CONFIGMAPS, namespace, cm_name, patch),
        read=lambda: api.get_or_none(CONFIGMAPS, namespace, cm_name),
        create=create,
    )
    if done == "created":
        actions.append(f"Created control ConfigMap {cm_name} (mode {containment.mode})")
    elif done == "patched":
        actions.append(_set_message(cm_name, data))
    return stored


def _data_patch(current: dict[str, Any], data: dict[str, str]) -> dict[str, Any] | None:
    return {"data": data} if {k: (current.get("data") or {}).get(k) for k in data} != data else None


def _set_message(cm_name: str, data: dict[str, str]) -> str:
    return f"Set control ConfigMap {cm_name}: mode {data['mode']}, revoked {data['revokedTools']}"


def observe_shadow(control: dict[str, Any], containment: Containment) -> LeverObservation:
    shadow_on = (control.get("data") or {}).get("mode") == "shadow"
    return LeverObservation(
        Lever.SHADOW,
        shadow_on,
        "mode: shadow set in the control ConfigMap; the agent runtime follows it within seconds"
        if shadow_on
        else "mode: active",
        containment.holders(Lever.SHADOW),
    )
