"""Pydantic models of the Tourniquet CRDs: the one source of truth for `crds/`."""

from tourniquet.models.agentdeployment import (
    AgentDeployment,
    AgentDeploymentSpec,
    AgentDeploymentStatus,
    BundleStatus,
    ConsumerKind,
    ConsumerRef,
    LeverState,
    LeverStatus,
    Playbook,
    RevisionRecord,
    RevisionVerdict,
)
from tourniquet.models.agentincident import AgentIncident, AgentIncidentSpec, AgentIncidentStatus
from tourniquet.models.bundle import Bundle, SideEffects, Tool
from tourniquet.models.common import Condition, ConditionStatus, Lever, RollbackTarget, RollbackTo, Severity

__all__ = [
    "AgentDeployment",
    "AgentDeploymentSpec",
    "AgentDeploymentStatus",
    "AgentIncident",
    "AgentIncidentSpec",
    "AgentIncidentStatus",
    "Bundle",
    "BundleStatus",
    "Condition",
    "ConditionStatus",
    "ConsumerKind",
    "ConsumerRef",
    "Lever",
    "LeverState",
    "LeverStatus",
    "Playbook",
    "RevisionRecord",
    "RevisionVerdict",
    "RollbackTarget",
    "RollbackTo",
    "Severity",
    "SideEffects",
    "Tool",
]
