"""The agent's NetworkPolicy and control ConfigMap, as desired state (pure)."""

from __future__ import annotations

import json
from typing import Any

from tourniquet.domain import names
from tourniquet.domain.containment import Containment
from tourniquet.models import AgentDeploymentSpec
from tourniquet.models.bundle import EgressRule

# DNS is always allowed: an agent that cannot resolve names fails in confusing ways.
DNS_RULE: dict[str, Any] = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}


def _rule(egress: EgressRule) -> dict[str, Any]:
    rule: dict[str, Any] = {"to": [{"ipBlock": {"cidr": egress.cidr}}]}
    if egress.ports:
        rule["ports"] = [{"protocol": egress.protocol, "port": port} for port in egress.ports]
    return rule


def desired_egress(spec: AgentDeploymentSpec, revoked_tools: set[str]) -> list[dict[str, Any]]:
    """DNS, the model endpoint, then each tool's endpoints, minus the revoked tools'."""
    rules = [DNS_RULE]
    rules += [_rule(e) for e in spec.bundle.model.egress]
    for tool in spec.bundle.tools:
        if tool.name not in revoked_tools:
            rules += [_rule(e) for e in tool.egress]
    return rules


def desired_network_policy_spec(spec: AgentDeploymentSpec, revoked_tools: set[str]) -> dict[str, Any]:
    return {
        "podSelector": spec.pod_selector.to_api(),
        "policyTypes": ["Egress"],
        "egress": desired_egress(spec, revoked_tools),
    }


def shared_endpoints(spec: AgentDeploymentSpec, tool: str, revoked_tools: set[str]) -> dict[str, list[str]]:
    """A revoked tool's endpoints that stay open because a tool still allowed uses them too."""
    mine = {e.cidr for t in spec.bundle.tools if t.name == tool for e in t.egress}
    shared: dict[str, list[str]] = {}
    for other in spec.bundle.tools:
        if other.name != tool and other.name not in revoked_tools:
            for egress in other.egress:
                if egress.cidr in mine:
                    shared.setdefault(egress.cidr, []).append(other.name)
    for egress in spec.bundle.model.egress:
        if egress.cidr in mine:
            shared.setdefault(egress.cidr, []).append("the model endpoint")
    return shared


def describe_revocation(spec: AgentDeploymentSpec, revoked_tools: set[str]) -> str:
    """What revocation really achieved, tool by tool, without over-claiming."""
    parts = []
    for tool in sorted(revoked_tools):
        shared = shared_endpoints(spec, tool, revoked_tools)
        if shared:
            held = "; ".join(f"{cidr} stays open for {', '.join(users)}" for cidr, users in sorted(shared.items()))
            parts.append(f"{tool}: listed in revokedTools (the runtime refuses it); {held}")
        else:
            parts.append(f"{tool}: egress rules removed from the NetworkPolicy and listed in revokedTools")
    return "; ".join(parts) + "; connections already open may survive until the pods restart"


def desired_control_data(mode: str, revoked_tools: set[str]) -> dict[str, str]:
    """The control ConfigMap the agent runtime honours before every tool call (shadow's and revokeTools' flags)."""
    return {"mode": mode, "revokedTools": json.dumps(sorted(revoked_tools))}


def shadow_flags(containment: Containment) -> dict[str, str]:
    """Shadow's flag in the control ConfigMap: `mode: shadow` makes the runtime record side effects instead."""
    return {"mode": containment.mode}


def revocation_flags(containment: Containment) -> dict[str, str]:
    """revokeTools' flag in the control ConfigMap: the runtime refuses the tools listed."""
    return {"revokedTools": json.dumps(sorted(containment.revoked_tools))}


def revoked_tools_listed(control_data: dict[str, str]) -> set[str]:
    """The tools a control ConfigMap lists as revoked (nothing when unreadable)."""
    try:
        parsed = json.loads(control_data.get("revokedTools") or "[]")
    except ValueError:
        return set()
    return {str(v) for v in parsed} if isinstance(parsed, list) else set()


def labels_for(agent: str, component: str) -> dict[str, str]:
    return {names.LABEL_MANAGED_BY: names.MANAGED_BY, names.LABEL_AGENT: agent, names.LABEL_COMPONENT: component}
