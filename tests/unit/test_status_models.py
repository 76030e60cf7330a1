"""Every status the operator builds is one its CRD declares: nothing written is pruned by the API server.

The API server drops a status field its schema does not declare, silently: a key the code writes that the pydantic
status model (the source of the CRD schema) lacks is lost on a real cluster. Each builder below runs on realistic
inputs and its output is validated with the status model, whose ApiModel config refuses unknown fields
(`extra="forbid"`) at every level.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from tests.conftest import example
from tests.unit.test_undo_status import HASH, T0, read

from tourniquet.domain import agent as decide
from tourniquet.domain import drill, gate, readiness, regression
from tourniquet.domain.bundles import StoredRevision
from tourniquet.domain.containment import Containment
from tourniquet.domain.detection.intake import Signal, cleared_detection, first_detection, repeated_detection
from tourniquet.domain.evidence import evidence_configmap, evidence_status
from tourniquet.domain.incident import LeverSeen, incident_status, invalid_incident_status
from tourniquet.domain.undo import JobSeen, LedgerRead, decide_compensation, undo_status
from tourniquet.models import (
    AgentDeploymentSpec,
    AgentDeploymentStatus,
    AgentIncidentStatus,
    RevisionVerdict,
    Severity,
)
from tourniquet.models.agentincident import IncidentClass
from tourniquet.models.common import ApiModel, Condition
from tourniquet.models.review import AgentDrillSpec, AgentRegressionCaseStatus, DrillRun

NOW = datetime(2026, 11, 21, 4, 0, tzinfo=UTC)
WORKER, AGENT = example()
SPEC = AgentDeploymentSpec.model_validate(AGENT["spec"])


def declared(model: type[BaseModel], status: dict[str, Any]) -> dict[str, Any]:
    """`status` validated by `model`: fails, naming the field, on any key the model does not declare."""
    model.model_validate(status)
    return status


def test_every_status_model_refuses_what_it_does_not_declare() -> None:
    assert ApiModel.model_config.get("extra") == "forbid"
    with pytest.raises(ValueError, match="notDeclared"):
        AgentIncidentStatus.model_validate({"timings": {"notDeclared": 1}})


def revisions() -> list[StoredRevision]:
    return [
        StoredRevision(1, "a" * 64, "refund-agent-bundle-1", "2026-11-20T10:00:00Z", RevisionVerdict.GOOD, "passed"),
        StoredRevision(2, "b" * 64, "refund-agent-bundle-2", "2026-11-21T03:00:00Z", RevisionVerdict.UNKNOWN),
    ]


def contained_agent() -> dict[str, Any]:
    """An agent's status through a pass that holds two levers for an incident, with the gate and readiness."""
    stored = revisions()
    containment = Containment(incidents=["sev1-refunds"])
    plan = decide.plan_bundle(SPEC, stored, 2, current=1, containment=containment)
    status = decide.agent_status(
        {},
        plan=plan,
        stored_after=stored,
        consumers=[{"kind": "Deployment", "name": "refund-agent-worker", "revision": 1}],
        # As the agent reconciler reports the levers it observed.
        containment={
            "incidents": ["sev1-refunds"],
            "levers": [
                {"name": "revokeTools", "state": "Applied", "detail": "egress cut", "incidents": ["sev1-refunds"]},
                {"name": "drain", "state": "Pending", "detail": "1 pod left", "incidents": ["sev1-refunds"]},
            ],
        },
        contained=(False, "LeversPending", "not yet observed applied: drain"),
        incidents=["sev1-refunds"],
        now=NOW,
        generation=3,
    )
    return status


GATE_OUTCOMES = [
    gate.held("refund-agent", 2, gate.Verdict("Running"), "refund-agent-eval-2", 3),
    gate.held("refund-agent", 2, gate.Verdict("Failed", [("c1", "refunded twice"), ("c2", "")]), "j", 3),
    gate.held("refund-agent", 2, gate.Verdict("Error", message="no report"), "j", 3),
    gate.invalid(2, "jobTemplate.spec.template is missing"),
    # As the gate reconciler reports an override and a pass.
    gate.GateOutcome(
        False,
        (False, "EvaluationOverridden", "overridden"),
        {"revision": 2, "state": "Overridden", "message": "sre: hotfix"},
    ),
    gate.GateOutcome(
        False, (False, "EvaluationPassed", "passed"), {"revision": 2, "job": "j", "cases": 3, "state": "Passed"}
    ),
    gate.GateOutcome(False, (False, "NotGated", "runs")),
    gate.GateOutcome(),
]


@pytest.mark.parametrize("outcome", GATE_OUTCOMES)
def test_an_agent_status_is_declared_by_its_model(outcome: gate.GateOutcome) -> None:
    status = gate.with_gate_status(contained_agent(), outcome, now=NOW, generation=3)
    worker = copy.deepcopy(WORKER)
    worker["spec"]["template"]["metadata"]["annotations"] = {"tourniquet.dev/bundle-revision": "1"}
    checklist = readiness.compute_readiness(
        readiness.ReadinessInputs(
            agent="refund-agent",
            spec=SPEC,
            raw_spec=AGENT["spec"],
            control={"data": {"mode": "active", "revokedTools": "[]"}},
            acks=[readiness.Ack("worker-1", "active", (), NOW - timedelta(seconds=60))],
            drills=[readiness.DrillRecord("weekly", NOW - timedelta(days=1), True, 2.5, 1.0)],
            consumers={("Deployment", "refund-agent-worker"): worker},
            active_revision=1,
            now=NOW,
        )
    )
    declared(AgentDeploymentStatus, readiness.with_readiness(status, checklist))


def test_an_invalid_agent_status_is_declared_by_its_model() -> None:
    status = decide.invalid_status(contained_agent(), "InvalidSpec", "spec.bundle: required", now=NOW, generation=4)
    declared(AgentDeploymentStatus, status)


def evidence() -> dict[str, Any]:
    cm = evidence_configmap(
        "support",
        "sev1-refunds",
        {"apiVersion": "tourniquet.dev/v1alpha1", "kind": "AgentIncident", "name": "sev1-refunds", "uid": "u"},
        agents=["refund-agent"],
        data={"agent.json": "{}"},
        truncated=True,
        captured_at="2026-11-21T03:00:01.000000Z",
    )
    return evidence_status(cm)


def an_incident(resolved: bool = False, **status: Any) -> dict[str, Any]:
    levers = [
        LeverSeen("refund-agent", "revokeTools", True, "egress cut"),
        LeverSeen("refund-agent", "drain", True, "scaled to 0", other_holders=("sev2-emails",)),
        LeverSeen("billing-agent", "shadow", False, "waiting", pending=True),
    ]
    return incident_status(
        status,
        start=("2026-11-21T03:00:00.000000Z", "openedAt"),
        generation=1,
        agents=["refund-agent", "billing-agent"],
        levers=levers,
        resolved=resolved,
        evidence=evidence(),
        notes=[("RolledBack", "rolled back from revision 2 to 1", "refund-agent"), ("DriftRepaired", "shadow", None)],
        now=NOW,
        missing={"ghost-agent": "AgentDeployment ghost-agent not found"},
    )


def with_undo(status: dict[str, Any], observed: LedgerRead, job: JobSeen | None, approved: str | None) -> dict:
    compensate = {"approved": True, "planHash": approved} if approved else None
    decision = decide_compensation("support/sev1-refunds", compensate, observed, job)
    undo = undo_status(status, observed, decision, job, approved_hash=approved, now=NOW, generation=1)
    # As the undo reconciler writes what it owns.
    return {
        **status,
        "blastRadius": undo.blast_radius,
        "compensation": undo.compensation,
        "conditions": undo.conditions,
    }


@pytest.mark.parametrize(
    ("observed", "job", "approved"),
    [
        (read(), None, None),
        (read(), None, HASH),
        (read(progress={"done": 1, "failed": 1}), JobSeen("comp-1", True, active=1, created=True), HASH),
        (read(progress={"done": 2}), JobSeen("comp-1", True), HASH),
        (read(), JobSeen("comp-1", True, failed_message="BackoffLimitExceeded"), HASH),
        (LedgerRead(error="connection refused", reason="Unreachable"), None, HASH),
        (LedgerRead(plan_error="unknown tool x"), None, None),
    ],
)
def test_an_incident_status_is_declared_by_its_model(observed: LedgerRead, job: JobSeen | None, approved: str) -> None:
    detected = first_detection_status()
    opened = declared(AgentIncidentStatus, an_incident(**detected))
    undone = declared(AgentIncidentStatus, with_undo(opened, observed, job, approved))
    resolved = declared(AgentIncidentStatus, an_incident(resolved=True, **undone))
    declared(AgentIncidentStatus, invalid_incident_status(resolved, "spec.agents: required", now=NOW, generation=2))


def first_detection_status() -> dict[str, Any]:
    signal = Signal(
        namespace="support",
        agent="refund-agent",
        name="refund-storm",
        source="prometheus",
        severity=Severity.SEV1,
        incident_class=IncidentClass.TOOL_MISUSE,
        summary="refunds retried",
        started_at=T0,
    )
    status = first_detection(signal, NOW)
    incident = {"status": status}
    status = {**status, "detection": repeated_detection(incident, signal, NOW)}
    incident = {"status": status}
    return {**status, "detection": {**status["detection"], **(cleared_detection(incident, NOW) or {})}}


def test_a_drill_run_is_declared_by_its_model() -> None:
    spec = AgentDrillSpec.model_validate({"agent": "refund-agent"})
    incident = {
        "metadata": {"name": "d-1", "creationTimestamp": "2026-11-21T03:00:00Z"},
        "status": declared(AgentIncidentStatus, an_incident()),
    }
    observed = drill.Observed(incident, [], {"metadata": {"name": "d-1-evidence"}, "data": {}}, (False, "no trace"))
    verdict = drill.judge(spec, SPEC, observed)
    result, message = drill.finish(spec, verdict)
    # As the drill reconciler records a finished run.
    declared(DrillRun, {"run": 1, "incident": "d-1", "result": result, "message": message, **verdict.run})


@pytest.mark.parametrize("exists", [True, False])
def test_a_regression_case_status_is_declared_by_its_model(exists: bool) -> None:
    status = regression.case_status({}, agent="refund-agent", namespace="support", exists=exists, now=NOW, generation=1)
    declared(AgentRegressionCaseStatus, status)


def test_a_condition_is_declared_by_its_model() -> None:
    for condition in contained_agent()["conditions"]:
        declared(Condition, condition)
