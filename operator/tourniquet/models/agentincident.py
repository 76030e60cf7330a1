"""AgentIncident: an incident on one or more agents, its containment, and the way back."""

from __future__ import annotations

import enum
from typing import Annotated, Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from tourniquet.models.agentdeployment import LeverStatus
from tourniquet.models.common import (
    DNS_SUBDOMAIN,
    TOOL_NAME,
    ApiModel,
    Condition,
    Lever,
    RollbackTarget,
    Severity,
    cel,
    validations,
)


class IncidentClass(str, enum.Enum):
    INTENT_MISCLASSIFICATION = "intent-misclassification"
    TOOL_MISUSE = "tool-misuse"
    CONTEXT_DRIFT = "context-drift"
    POLICY_BYPASS = "policy-bypass"
    COST_RUNAWAY = "cost-runaway"
    CASCADE = "cascade"
    OTHER = "other"


class IncidentWindow(ApiModel):
    """The incident window: the scope of blast radius and compensation."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("!has(self.end) || self.end >= self.start", "window.end must not be before window.start")
        )
    )

    start: str = Field(description="RFC 3339 time.", json_schema_extra={"format": "date-time"})
    end: str | None = Field(
        default=None, description="RFC 3339 time; open-ended when unset.", json_schema_extra={"format": "date-time"}
    )


PLAN_HASH = r"^[0-9a-f]{64}$"


class CompensateSpec(ApiModel):
    """Which of the window's actions to compensate, and a human's approval of the plan (by its hash)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.approved) || !self.approved || has(self.planHash)",
                "an approval names the plan it approves: set planHash (kubectl tourniquet compensate shows it)",
            )
        )
    )

    approved: bool = Field(default=False, description="A human approves running compensation.")
    plan_hash: str | None = Field(
        default=None, alias="planHash", pattern=PLAN_HASH, description="The hash of the plan approved."
    )
    approved_by: str | None = Field(default=None, alias="approvedBy", max_length=253)
    duplicates_only: bool = Field(
        default=False,
        alias="duplicatesOnly",
        description="Only actions whose primary subject had an earlier successful action of the same tool.",
    )
    tools: list[str] | None = Field(default=None, max_length=64)
    subjects: list[str] | None = Field(default=None, max_length=1000)
    bundle_revisions: list[int] | None = Field(default=None, alias="bundleRevisions", max_length=100)

    @model_validator(mode="after")
    def _approval_names_a_plan(self) -> CompensateSpec:
        if self.approved and not self.plan_hash:
            raise ValueError(
                "an approval names the plan it approves: set planHash (kubectl tourniquet compensate shows it)"
            )
        return self


class FixSpec(ApiModel):
    """A bundle revision marked as this incident's fix: it may roll out while the bundle is frozen."""

    revision: int = Field(ge=1)


class AgentIncidentSpec(ApiModel):
    """The incident as on-call sees it: which agents, how severe, what to hold, and the way back."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("self.agents.all(a, self.agents.exists_one(b, b == a))", "agents must be unique", ".agents")
        )
    )

    # Names are bounded so the API server can cost the uniqueness rule above (n² comparisons); the pattern is
    # for the CRD only, so pydantic keeps the precise message of `_agents` below.
    agents: list[Annotated[str, Field(max_length=253, json_schema_extra={"pattern": DNS_SUBDOMAIN})]] = Field(
        min_length=1, max_length=100, description="AgentDeployment names, same namespace."
    )
    severity: Severity
    incident_class: IncidentClass = Field(default=IncidentClass.OTHER, alias="class")
    summary: str = Field(default="", max_length=1024)
    contain: list[Lever] | None = Field(
        default=None, description="Levers to hold; unset takes the agent's playbook for the severity."
    )
    # The pattern is for the CRD only, so pydantic keeps the precise message of `_tools` below.
    revoke_tools: list[Annotated[str, Field(json_schema_extra={"pattern": TOOL_NAME})]] | None = Field(
        default=None, alias="revokeTools", description="Tools to revoke; default: every tool with sideEffects: write."
    )
    rollback: RollbackTarget | None = None
    cascade: bool = Field(default=False, description="Contain agents that dependsOn these ones too.")
    fix: FixSpec | None = None
    window: IncidentWindow | None = None
    compensate: CompensateSpec | None = None
    resolved: bool = Field(default=False, description="Set true to release the levers and write the postmortem.")
    drill: bool = Field(
        default=False,
        description="Opened by an AgentDrill: its levers only (never the playbook's rollback), no postmortem.",
    )

    @field_validator("agents")
    @classmethod
    def _agents(cls, agents: list[str]) -> list[str]:
        import re

        for agent in agents:
            if not re.match(DNS_SUBDOMAIN, agent):
                raise ValueError(f"{agent!r} is not a valid AgentDeployment name")
        if len(set(agents)) != len(agents):
            raise ValueError("agents must be unique")
        return agents

    @field_validator("revoke_tools")
    @classmethod
    def _tools(cls, tools: list[str] | None) -> list[str] | None:
        import re

        for tool in tools or []:
            if not re.match(TOOL_NAME, tool):
                raise ValueError(f"{tool!r} is not a valid tool name")
        return tools


# ---------------------------------------------------------------- status


class TimelineEvent(str, enum.Enum):
    DETECTED = "Detected"
    OPENED = "Opened"
    AGENT_MISSING = "AgentMissing"
    LEVER_APPLIED = "LeverApplied"
    EVIDENCE_CAPTURED = "EvidenceCaptured"
    CONTAINED = "Contained"
    DRIFT_REPAIRED = "DriftRepaired"
    ROLLED_BACK = "RolledBack"
    BLAST_RADIUS = "BlastRadius"
    LEDGER_UNAVAILABLE = "LedgerUnavailable"
    COMPENSATION_PLANNED = "CompensationPlanned"
    COMPENSATION_REFUSED = "CompensationRefused"
    COMPENSATION_STARTED = "CompensationStarted"
    COMPENSATED = "Compensated"
    LEVER_RELEASED = "LeverReleased"
    RELEASED = "Released"
    RESOLVED = "Resolved"
    FAILED = "Failed"


class TimelineEntry(ApiModel):
    time: str
    event: TimelineEvent
    message: str = ""
    agent: str | None = None


class StartedFrom(str, enum.Enum):
    """What an incident's timings are measured from."""

    OPENED_AT = "openedAt"  # the tourniquet.dev/opened-at annotation (tourniquet contain, detection)
    FIRST_SEEN = "firstSeen"  # when the operator first saw the incident
    CREATION_TIMESTAMP = "creationTimestamp"  # whole seconds: the operator saw it late


class Timings(ApiModel):
    started_at: str | None = Field(
        default=None, alias="startedAt", description="Where the seconds below are counted from (RFC 3339)."
    )
    started_from: StartedFrom | None = Field(
        default=None,
        alias="startedFrom",
        description="openedAt: the tourniquet.dev/opened-at annotation written by `tourniquet contain` and "
        "detection; firstSeen: when the operator first saw the incident; creationTimestamp (whole seconds): the "
        "operator saw it more than 2 s after its creation.",
    )
    detected_seconds: float | None = Field(default=None, alias="detectedSeconds")
    contained_seconds: float | None = Field(default=None, alias="containedSeconds")
    resolved_seconds: float | None = Field(default=None, alias="resolvedSeconds")
    levers: dict[str, float] = Field(default_factory=dict, description="Seconds from startedAt to each lever applied.")


class EvidenceStatus(ApiModel):
    config_map: str | None = Field(default=None, alias="configMap")
    captured_at: str | None = Field(default=None, alias="capturedAt")
    bytes: int | None = None
    truncated: bool = False


class ToolBlastRadius(ApiModel):
    """One agent's tool: its successful actions in the window, their distinct subjects and declared amounts."""

    agent: str
    tool: str
    actions: int = 0
    subjects: int = 0
    amounts: dict[str, int] = Field(default_factory=dict, description="Sum of the declared amounts, per unit.")
    compensation: str = Field(default="none", description="reversal | mitigation | none, as the bundle declares.")
    reversible: bool = False


class BlastWindow(ApiModel):
    start: str
    end: str | None = Field(default=None, description="Unset: the window is still open (not contained yet).")
    source: str = Field(default="", description="Where the start comes from.")


class BlastRadius(ApiModel):
    """What the incident's agents did in its window, read from their ledger (never a partial count)."""

    actions: int = 0
    by_tool: dict[str, int] = Field(default_factory=dict, alias="byTool")
    subjects: int = Field(default=0, description="Distinct subjects per agent, added up over the agents.")
    reversible: int = 0
    irreversible: int = 0
    amounts: dict[str, int] = Field(default_factory=dict)
    tools: list[ToolBlastRadius] = Field(default_factory=list)
    window: BlastWindow | None = None
    observed_at: str | None = Field(default=None, alias="observedAt")


class ChecklistItem(ApiModel):
    """Actions a human mitigates (or that nothing can undo): how many, and the steps."""

    agent: str
    tool: str
    actions: int = 0
    type: str = "none"
    steps: list[str] = Field(default_factory=list)
    reason: str | None = None


class CompensationPlanStatus(ApiModel):
    """The current plan for spec.compensate's selection: approve it by its hash."""

    hash: str
    actions: int = 0
    planned: int = Field(default=0, description="Actions to reverse.")
    irreversible: int = Field(default=0, description="Actions to mitigate by hand (the checklist).")
    skipped: int = Field(default=0, description="Actions nothing is declared to undo.")
    by_tool: dict[str, int] = Field(default_factory=dict, alias="byTool")
    checklist: list[ChecklistItem] = Field(default_factory=list)


class CompensationStatus(ApiModel):
    """The plan, and the approved plan's progress as the ledger records it."""

    plan: CompensationPlanStatus | None = None
    approved_hash: str | None = Field(default=None, alias="approvedHash")
    job: str | None = Field(default=None, description="The compensation Job of the approved plan.")
    planned: int = 0
    done: int = 0
    failed: int = 0
    irreversible: int = 0
    skipped: int = 0
    pending: int = 0
    observed_at: str | None = Field(default=None, alias="observedAt")


class DetectionRecord(ApiModel):
    """Where an auto-opened incident came from; repeats update it instead of opening another incident."""

    fingerprint: str
    rule: str | None = None
    source: str = Field(default="prometheus", description="prometheus | alertmanager")
    count: int = 1
    first_seen: str | None = Field(default=None, alias="firstSeen")
    last_seen: str | None = Field(default=None, alias="lastSeen")
    cleared_at: str | None = Field(
        default=None,
        alias="clearedAt",
        description="When the source last reported the signal gone; the incident stays open until a human resolves.",
    )


class AgentIncidentStatus(ApiModel):
    """What the operator observed. Written by the operator only."""

    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    phase: str | None = Field(default=None, description="Derived from conditions, for printer columns only.")
    agents: list[str] = Field(default_factory=list, description="Every agent contained, cascade included.")
    levers: list[LeverStatus] = Field(default_factory=list)
    timeline: list[TimelineEntry] = Field(default_factory=list)
    timings: Timings | None = None
    evidence: EvidenceStatus | None = None
    blast_radius: BlastRadius | None = Field(default=None, alias="blastRadius")
    compensation: CompensationStatus | None = None
    detection: DetectionRecord | None = None
    conditions: list[Condition] = Field(default_factory=list)


class AgentIncident(ApiModel):
    """An incident on one or more agents: its containment, its evidence, and the way back."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = Field(default="tourniquet.dev/v1alpha1", alias="apiVersion")
    kind: str = "AgentIncident"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: AgentIncidentSpec
    status: AgentIncidentStatus | None = None
