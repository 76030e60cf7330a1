"""Containment is the union of open incidents: no interleaving releases a lever another incident holds."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from tourniquet.domain import drain, network
from tourniquet.domain.containment import IncidentView, incident_problems, plan_containment
from tourniquet.models import AgentDeploymentSpec, AgentIncidentSpec, Lever

AGENT = AgentDeploymentSpec.model_validate(
    {
        "consumers": [{"name": "worker"}],
        "podSelector": {"matchLabels": {"app": "a"}},
        "bundle": {
            "model": {"provider": "p", "name": "m", "version": "2026-01-01"},
            "prompt": {"template": "t"},
            "tools": [
                {"name": "lookup", "sideEffects": "read", "egress": [{"cidr": "10.1.0.0/16", "ports": [443]}]},
                {"name": "refund", "egress": [{"cidr": "10.2.0.0/16", "ports": [443]}]},
                {"name": "email", "egress": [{"cidr": "10.3.0.0/16", "ports": [25]}]},
            ],
        },
        "dependsOn": [{"name": "upstream"}],
    }
)
ORIGINAL_REPLICAS = 3


def incident(name: str, levers: list[str] | None, tools: list[str] | None = None, **extra) -> IncidentView:
    spec = AgentIncidentSpec.model_validate(
        {"agents": ["a"], "severity": "SEV1", "contain": levers, "revokeTools": tools, **extra}
    )
    return IncidentView(name, spec, evidence_captured=True)


def test_the_playbook_applies_when_the_incident_names_no_levers():
    sev1 = IncidentView("i", AgentIncidentSpec.model_validate({"agents": ["a"], "severity": "SEV1"}), True)
    sev2 = IncidentView("j", AgentIncidentSpec.model_validate({"agents": ["a"], "severity": "SEV2"}), True)
    sev3 = IncidentView("k", AgentIncidentSpec.model_validate({"agents": ["a"], "severity": "SEV3"}), True)
    assert plan_containment("a", AGENT, [sev1]).drained
    assert plan_containment("a", AGENT, [sev1]).revoked_tools == {"refund", "email"}  # every write tool
    assert plan_containment("a", AGENT, [sev2]).mode == "shadow"
    empty = plan_containment("a", AGENT, [sev3])
    assert (empty.mode, empty.revoked_tools, empty.drained) == ("active", set(), False)


def test_drain_waits_for_evidence_and_then_goes_ahead():
    waiting = IncidentView("i", incident("i", ["drain"]).spec, evidence_captured=False)
    planned = plan_containment("a", AGENT, [waiting])
    assert not planned.drained and planned.drain_waiting == {"i"}
    assert plan_containment("a", AGENT, [incident("i", ["drain"])]).drained


def test_cascade_gives_dependents_the_lighter_containment():
    upstream_incident = IncidentView(
        "u", AgentIncidentSpec.model_validate({"agents": ["upstream"], "severity": "SEV1", "cascade": True}), True
    )
    planned = plan_containment("a", AGENT, [upstream_incident], upstream={})
    assert planned.mode == "shadow" and not planned.drained and planned.incidents == ["u"]
    no_cascade = IncidentView("v", upstream_incident.spec.model_copy(update={"cascade": False}), True)
    assert plan_containment("a", AGENT, [no_cascade]).incidents == []


def test_bad_incidents_are_explained():
    no_consumers = AGENT.model_copy(update={"consumers": []})
    spec = AgentIncidentSpec.model_validate(
        {"agents": ["a", "ghost"], "severity": "SEV1", "contain": ["drain"], "revokeTools": ["teleport"]}
    )
    problems = incident_problems(spec, {"a": no_consumers, "ghost": None}, "support")
    assert not [p for p in problems if "ghost" in p]  # missing: reported and retried, never a refusal
    assert any("has no tool 'teleport' to revoke (its tools: email, lookup, refund)" in p for p in problems)
    assert any("agent a has no consumers to drain" in p for p in problems)


# ---------------------------------------------------------------- the property

LEVER_SETS = st.lists(st.sampled_from(["shadow", "revokeTools", "drain"]), unique=True)
TOOL_SETS = st.one_of(st.none(), st.lists(st.sampled_from(["refund", "email"]), unique=True, min_size=1))
STEP = st.tuples(
    st.sampled_from(["open", "edit", "resolve", "delete", "restart", "scale-up"]),
    st.integers(0, 3),
    LEVER_SETS,
    TOOL_SETS,
)


class World:
    """The objects the levers act on, changed only through the planners' patches."""

    def __init__(self) -> None:
        self.workload = {"metadata": {"resourceVersion": "1"}, "spec": {"replicas": ORIGINAL_REPLICAS}}
        self.control = network.desired_control_data("active", set())
        self.egress = network.desired_egress(AGENT, set())

    def merge(self, patch: dict) -> None:
        meta = patch.get("metadata") or {}
        annotations = self.workload["metadata"].setdefault("annotations", {})
        for key, value in (meta.get("annotations") or {}).items():
            if value is None:
                annotations.pop(key, None)
            else:
                annotations[key] = value
        self.workload["spec"].update(patch.get("spec") or {})

    def reconcile(self, incidents: list[IncidentView]) -> None:
        planned = plan_containment("a", AGENT, incidents)
        self.control = network.desired_control_data(planned.mode, planned.revoked_tools)
        self.egress = network.desired_egress(AGENT, planned.revoked_tools)
        patch = drain.plan_drain_patch(self.workload) if planned.drained else drain.plan_restore_patch(self.workload)
        if patch is not None:
            self.merge(patch)


@settings(max_examples=300, deadline=None)
@given(st.lists(STEP, min_size=1, max_size=25))
def test_no_interleaving_releases_a_lever_that_an_open_incident_holds(steps):
    world = World()
    incidents: dict[str, IncidentView] = {}
    for action, index, levers, tools in steps:
        name = f"inc-{index}"
        if action in ("open", "edit"):
            if action == "open" or name in incidents:
                incidents[name] = incident(name, levers, tools)
        elif action == "resolve" and name in incidents:
            incidents[name] = IncidentView(name, incidents[name].spec.model_copy(update={"resolved": True}), True)
        elif action == "delete":
            incidents.pop(name, None)
        elif action == "restart":
            world = copy.deepcopy(world)  # a new operator: nothing but the world survives
        elif action == "scale-up":
            world.workload["spec"]["replicas"] = 7  # someone scales the consumer during the incident
        world.reconcile(list(incidents.values()))

        open_ = [i for i in incidents.values() if i.open]
        held = {lever for i in open_ for lever in (i.spec.contain or [])}
        wanted_tools = {
            tool
            for i in open_
            if Lever.REVOKE_TOOLS in (i.spec.contain or [])
            for tool in (i.spec.revoke_tools or ["refund", "email"])
        }
        assert (world.control["mode"] == "shadow") == (Lever.SHADOW in held)
        assert network.revoked_tools_listed(world.control) == wanted_tools
        for tool, cidr in (("refund", "10.2.0.0/16"), ("email", "10.3.0.0/16")):
            allowed = any(r.get("to") == [{"ipBlock": {"cidr": cidr}}] for r in world.egress)
            assert allowed == (tool not in wanted_tools)
        if Lever.DRAIN in held:
            assert world.workload["spec"]["replicas"] == 0
            assert drain.recorded_replicas(world.workload) in (ORIGINAL_REPLICAS, 7)
        else:
            assert drain.recorded_replicas(world.workload) is None
        # The value to restore is never lost: once all drains are released, the consumer is back.
        if Lever.DRAIN not in held and not any(a == "scale-up" for a, *_ in steps):
            assert world.workload["spec"]["replicas"] == ORIGINAL_REPLICAS
