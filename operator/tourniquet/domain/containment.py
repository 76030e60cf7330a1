"""Containment as a union: what all open incidents on one agent ask of it (pure).

An agent's desired containment is derived from the incidents that are open now, never from a
history of applies and releases. Releasing one incident therefore cannot release a lever another
open incident still holds, and a restart at any point converges to the same answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tourniquet.domain.errors import describe_validation_error
from tourniquet.models import AgentDeploymentSpec, AgentIncidentSpec, Lever, RollbackTarget, SideEffects


@dataclass(frozen=True)
class IncidentView:
    """One incident as containment sees it."""

    name: str
    spec: AgentIncidentSpec
    evidence_captured: bool = False
    deleting: bool = False
    valid: bool = True

    @property
    def open(self) -> bool:
        return self.valid and not self.spec.resolved and not self.deleting


def incident_view(body: Mapping[str, Any], *, valid: bool | None = None) -> IncidentView | None:
    """Parse an AgentIncident body; None when its spec is not even well-formed."""
    spec, _ = parse_incident(body)
    if spec is None:
        return None
    status = body.get("status") or {}
    accepted = next((c for c in status.get("conditions") or [] if c.get("type") == "Accepted"), None)
    return IncidentView(
        name=body["metadata"]["name"],
        spec=spec,
        evidence_captured=bool((status.get("evidence") or {}).get("capturedAt")),
        deleting=bool(body["metadata"].get("deletionTimestamp")),
        valid=valid if valid is not None else (accepted is None or accepted.get("status") != "False"),
    )


def parse_incident_spec(raw: Mapping[str, Any] | None) -> tuple[AgentIncidentSpec | None, str | None]:
    try:
        return AgentIncidentSpec.model_validate(json.loads(json.dumps(dict(raw or {})))), None
    except ValidationError as error:
        return None, describe_validation_error(error)


def parse_incident(body: Mapping[str, Any]) -> tuple[AgentIncidentSpec | None, str | None]:
    """The incident's parsed spec, or None and why it is invalid."""
    return parse_incident_spec(body.get("spec"))


def write_tools(spec: AgentDeploymentSpec) -> list[str]:
    return [t.name for t in spec.bundle.tools if t.side_effects == SideEffects.WRITE]


@dataclass(frozen=True)
class AgentClaim:
    """What one incident asks of one agent: its levers, and the tools it revokes (see _claim)."""

    incident: str
    levers: tuple[Lever, ...]
    tools: tuple[str, ...]
    rollback: RollbackTarget | None
    cascaded_from: str | None = None


def _claim(
    incident: str, levers: list[Lever], tools: list[str], rollback: RollbackTarget | None, source: str | None = None
) -> AgentClaim:
    """The tools are a claim's only when it revokes them; revoking no tool holds no lever."""
    revokes = Lever.REVOKE_TOOLS in levers and bool(tools)
    held = tuple(lever for lever in levers if lever != Lever.REVOKE_TOOLS or revokes)
    return AgentClaim(incident, held, tuple(tools) if revokes else (), rollback, source)


def claim(
    agent: str,
    spec: AgentDeploymentSpec,
    incident: IncidentView,
    upstream: dict[str, AgentDeploymentSpec],
) -> AgentClaim | None:
    """The levers `incident` holds on `agent`, or None when it holds nothing there."""
    if not incident.open:
        return None
    severity = incident.spec.severity
    if agent in incident.spec.agents:
        playbook = spec.playbook(severity)
        levers = incident.spec.contain if incident.spec.contain is not None else playbook.contain
        tools = incident.spec.revoke_tools or playbook.revoke_tools or write_tools(spec)
        rollback = incident.spec.rollback
        if rollback is None and playbook.rollback is not None and not incident.spec.drill:  # a drill never rolls back
            rollback = RollbackTarget(to=playbook.rollback)
        return _claim(incident.name, levers, tools, rollback)
    if incident.spec.cascade:
        for dependency in spec.depends_on:
            if dependency.name in incident.spec.agents:
                source = upstream.get(dependency.name)
                cascade = source.playbook(severity).cascade if source else None
                levers = cascade.contain if cascade is not None else [Lever.SHADOW]
                return _claim(incident.name, levers, write_tools(spec), None, dependency.name)
    return None


# A lever that destroys state (drain kills the pods and their memory) waits until the incident's evidence is captured.
WAITS_FOR_EVIDENCE = frozenset({Lever.DRAIN})


@dataclass
class Containment:
    """The union of every open incident's claim on one agent, lever by lever (no lever is special here: each lever
    plans its own state from these sets, see tourniquet.levers.registry)."""

    held: dict[Lever, set[str]] = field(default_factory=dict)  # lever -> incidents holding it in force
    waiting: dict[Lever, set[str]] = field(default_factory=dict)  # lever -> incidents whose claim waits for evidence
    tools: dict[str, set[str]] = field(default_factory=dict)  # tool -> incidents revoking it (revokeTools)
    rollbacks: list[tuple[str, RollbackTarget]] = field(default_factory=list)
    incidents: list[str] = field(default_factory=list)  # open incidents on this agent
    fixes: set[int] = field(default_factory=set)

    def holders(self, lever: Lever) -> list[str]:
        """The incidents holding `lever` in force."""
        return sorted(self.held.get(lever, ()))

    def claimants(self, lever: Lever) -> list[str]:
        """The incidents holding `lever`, in force or waiting for their evidence."""
        return sorted(self.held.get(lever, set()) | self.waiting.get(lever, set()))

    def holds(self, lever: Lever) -> bool:
        return bool(self.held.get(lever))

    # What shadow, revokeTools and drain plan from it (read by their domain and lever modules).
    @property
    def mode(self) -> str:
        return "shadow" if self.holds(Lever.SHADOW) else "active"

    @property
    def revoked_tools(self) -> set[str]:
        return set(self.tools)

    @property
    def drained(self) -> bool:
        return self.holds(Lever.DRAIN)

    @property
    def drain_waiting(self) -> set[str]:
        return set(self.waiting.get(Lever.DRAIN, ()))


def plan_containment(
    agent: str,
    spec: AgentDeploymentSpec,
    incidents: list[IncidentView],
    upstream: dict[str, AgentDeploymentSpec] | None = None,
) -> Containment:
    """Union of the claims of every open incident on `agent`; a lever in WAITS_FOR_EVIDENCE waits for the evidence."""
    result = Containment()
    # Most of a namespace's incidents are about other agents: only those naming it, or cascading, can claim.
    relevant = [i for i in incidents if i.spec.cascade or agent in i.spec.agents]
    for incident in sorted(relevant, key=lambda i: i.name):
        held = claim(agent, spec, incident, upstream or {})
        if held is None:
            continue
        result.incidents.append(incident.name)
        if incident.spec.fix is not None:
            result.fixes.add(incident.spec.fix.revision)
        for lever in held.levers:
            waits = lever in WAITS_FOR_EVIDENCE and not incident.evidence_captured
            (result.waiting if waits else result.held).setdefault(lever, set()).add(incident.name)
        for tool in held.tools:
            result.tools.setdefault(tool, set()).add(incident.name)
        if held.rollback is not None:
            result.rollbacks.append((incident.name, held.rollback))
    return result


def incident_problems(
    spec: AgentIncidentSpec, agents: dict[str, AgentDeploymentSpec | None], namespace: str
) -> list[str]:
    """What makes an incident impossible to act on; an incident with problems touches nothing. An agent that does
    not exist (None) is not one: the agents that exist are contained, and the missing one once it exists."""
    problems = []
    for name in spec.agents:
        agent = agents.get(name)
        if agent is None:
            continue
        playbook = agent.playbook(spec.severity)
        levers = spec.contain if spec.contain is not None else playbook.contain
        tools = {t.name for t in agent.bundle.tools}
        for tool in spec.revoke_tools or []:
            if tool not in tools:
                known = ", ".join(sorted(tools)) or "none"
                problems.append(f"agent {name} has no tool {tool!r} to revoke (its tools: {known})")
        if Lever.DRAIN in levers and not agent.consumers:
            problems.append(f"agent {name} has no consumers to drain; remove drain or add spec.consumers")
    return problems
