"""Review and prevent: the redeploy gate (an agent's evaluation Job), and what it reports.

Kept apart from `agentdeployment` so the review features (the gate, regression cases, readiness, drills,
postmortems) grow here without touching the core models more than a field each.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

from pydantic import ConfigDict, Field, field_validator

from tourniquet.models.common import (
    DNS_SUBDOMAIN,
    PRESERVE_UNKNOWN,
    TOOL_NAME,
    ApiModel,
    Condition,
    Lever,
    cel,
    validations,
)

OVERRIDE_REASON_MESSAGE = "an evaluation override needs a reason: say why this revision may skip its evaluation"


class EvaluationOverride(ApiModel):
    """An emergency: roll this revision out without (or despite) its evaluation. Recorded on the revision."""

    model_config = ConfigDict(
        json_schema_extra=validations(cel("self.reason.matches('[^ ]')", OVERRIDE_REASON_MESSAGE, ".reason"))
    )

    revision: int = Field(ge=1, description="The bundle revision that may roll out without passing its evaluation.")
    # minLength is for the CRD only, so pydantic keeps the precise message of `_reason` below.
    reason: str = Field(
        max_length=1024,
        description="Why: kept on the revision with who and when.",
        json_schema_extra={"minLength": 1},
    )
    by: str | None = Field(
        default=None, max_length=253, description="Who decided (kubectl tourniquet gate override records the user)."
    )

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(OVERRIDE_REASON_MESSAGE)
        return value


class Evaluation(ApiModel):
    """The redeploy gate: a new bundle revision rolls out only once this Job passes every regression case."""

    job_template: dict[str, Any] = Field(
        alias="jobTemplate",
        description="A Job template ({metadata, spec} as in a CronJob): the agent's own eval command. The operator "
        "mounts the candidate bundle at /etc/tourniquet/bundle and the regression cases at /etc/tourniquet/cases, "
        "sets restartPolicy Never, and reads the per-case results from the pod's termination message.",
        json_schema_extra=PRESERVE_UNKNOWN,
    )
    override: EvaluationOverride | None = None


class EvaluationState(str, enum.Enum):
    RUNNING = "Running"
    PASSED = "Passed"
    FAILED = "Failed"
    ERROR = "Error"
    INVALID = "Invalid"
    OVERRIDDEN = "Overridden"


class FailedCase(ApiModel):
    name: str
    message: str = ""


class EvaluationStatus(ApiModel):
    """The gate's last decision about a candidate revision, as observed."""

    revision: int | None = Field(default=None, description="The revision evaluated (the candidate).")
    job: str | None = Field(default=None, description="The evaluation Job (deterministic per revision and cases).")
    state: EvaluationState | None = None
    cases: int | None = Field(default=None, description="How many regression cases it was given.")
    failed: list[FailedCase] = Field(default_factory=list, description="The cases it failed, as it reported them.")
    message: str = ""


# ---------------------------------------------------------------- regression cases


class CaseSource(str, enum.Enum):
    LEDGER = "ledger"
    EVIDENCE = "evidence"
    MANUAL = "manual"


class RegressionInput(ApiModel):
    """What the agent saw for one implicated action: its tool call and, from the decision trace, what led to it."""

    tool: str | None = Field(default=None, pattern=TOOL_NAME)
    arguments: dict[str, Any] = Field(default_factory=dict, json_schema_extra=PRESERVE_UNKNOWN)
    task: str | None = Field(default=None, max_length=253, description="The task (unit of work) it belonged to.")
    action: str | None = Field(default=None, max_length=255, description="The action's idempotency key in the ledger.")
    subjects: list[str] = Field(default_factory=list, description="What it touched, e.g. order:123.")
    time: str | None = None
    trace: dict[str, Any] | None = Field(
        default=None,
        description="The decision trace (model input, retrieved context, model output), size-bounded and redacted.",
        json_schema_extra=PRESERVE_UNKNOWN,
    )
    evidence: str | None = Field(
        default=None, max_length=16384, description="Without a ledger: the evidence's log lines about this action."
    )


class MaxCalls(ApiModel):
    tool: str = Field(pattern=TOOL_NAME)
    per_argument: str | None = Field(
        default=None, alias="perArgument", description="Count per value of this argument (e.g. order_id)."
    )
    count: int = Field(default=1, ge=0)


class ExpectedBehaviour(ApiModel):
    """What the agent should have done: words for people, and checks the eval command may read."""

    description: str = Field(min_length=1, max_length=4096)
    max_calls: list[MaxCalls] = Field(default_factory=list, alias="maxCalls")
    forbidden_tools: list[Annotated[str, Field(pattern=TOOL_NAME)]] = Field(
        default_factory=list, alias="forbiddenTools"
    )
    checks: dict[str, Any] = Field(
        default_factory=dict, description="Anything else the agent's eval reads.", json_schema_extra=PRESERVE_UNKNOWN
    )


class AgentRegressionCaseSpec(ApiModel):
    """A confirmed failure mode of one agent: the inputs that led to it and the behaviour expected instead."""

    agent: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="The AgentDeployment.")
    incident: str | None = Field(default=None, max_length=253, description="The incident it came from.")
    revision: int | None = Field(default=None, ge=1, description="The bundle revision implicated in that incident.")
    source: CaseSource = CaseSource.MANUAL
    inputs: list[RegressionInput] = Field(default_factory=list, max_length=100)
    expected: ExpectedBehaviour


class AgentRegressionCaseStatus(ApiModel):
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    conditions: list[Condition] = Field(default_factory=list)


class AgentRegressionCase(ApiModel):
    """A regression case: every redeploy of its agent must pass it (the agent's evaluation Job is given it)."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = Field(default="tourniquet.dev/v1alpha1", alias="apiVersion")
    kind: str = "AgentRegressionCase"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: AgentRegressionCaseSpec
    status: AgentRegressionCaseStatus | None = None


# ---------------------------------------------------------------- readiness


class ReadinessSpec(ApiModel):
    """How fresh the kill-switch evidence must be for the readiness checklist."""

    drill_max_age_days: int = Field(
        default=30, ge=1, le=365, alias="drillMaxAgeDays", description="A drill older than this no longer counts."
    )
    drill_contain_seconds: float = Field(
        default=60, gt=0, le=3600, alias="drillContainSeconds", description="A drill must contain within this."
    )
    acknowledged_within_seconds: int = Field(
        default=900,
        ge=60,
        alias="acknowledgedWithinSeconds",
        description="The runtime must have acknowledged the control ConfigMap this recently (it reports every 5 "
        "minutes and on every change).",
    )


class ReadinessItem(ApiModel):
    name: str = Field(description="killSwitch | versionPin | compensation | traceRetention | redeployGate")
    ready: bool
    message: str = ""
    fix: str = Field(default="", description="What to do when it is not ready.")


class ReadinessStatus(ApiModel):
    """The five readiness questions, as observed at the agent's last full pass."""

    summary: str = Field(default="", description="Ready items out of five, e.g. 4/5 (the READINESS column).")
    ready: int = 0
    items: list[ReadinessItem] = Field(default_factory=list)


# ---------------------------------------------------------------- drills

CRON_FIELD = r"[0-9*/,-]+"
CRON_PATTERN = rf"^{CRON_FIELD} {CRON_FIELD} {CRON_FIELD} {CRON_FIELD} {CRON_FIELD}$"


class AgentDrillSpec(ApiModel):
    """A game day: contain the agent on purpose, measure, check, release. Never a drain unless listed."""

    agent: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="The AgentDeployment.")
    levers: list[Lever] = Field(
        default_factory=lambda: [Lever.SHADOW, Lever.REVOKE_TOOLS],
        min_length=1,
        description="The levers to pull: shadow and revokeTools by default; drain only when listed here.",
    )
    tools: list[Annotated[str, Field(pattern=TOOL_NAME)]] | None = Field(
        default=None, description="The tools revokeTools revokes; default: every write tool."
    )
    limit_seconds: float = Field(
        default=60,
        gt=0,
        le=3600,
        alias="limitSeconds",
        description="Containment and the runtime's acknowledgement must be observed within this.",
    )
    schedule: str | None = Field(
        default=None,
        pattern=CRON_PATTERN,
        description="Cron (5 fields, UTC), e.g. '0 3 * * 1'; unset: run once, when created.",
    )
    suspend: bool = Field(default=False, description="Scheduled runs wait while true.")

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is not None:
            from tourniquet.models.cron import parse_cron

            parse_cron(value)  # raises ValueError with the field at fault
        return value


class DrillLever(ApiModel):
    name: Lever
    applied: bool = False
    applied_seconds: float | None = Field(default=None, alias="appliedSeconds")
    acknowledged: bool | None = Field(default=None, description="Whether the runtime reported applying it (None: n/a).")
    acknowledged_seconds: float | None = Field(default=None, alias="acknowledgedSeconds")
    detail: str = ""


class DrillCheck(ApiModel):
    ok: bool | None = Field(default=None, description="None: could not be checked.")
    detail: str = ""


class DrillRun(ApiModel):
    run: int
    incident: str | None = Field(default=None, description="The incident it opened (none when it did not run).")
    started_at: str | None = Field(default=None, alias="startedAt")
    finished_at: str | None = Field(default=None, alias="finishedAt")
    result: str = Field(default="Running", description="Running | Passed | Failed | Skipped")
    contained_seconds: float | None = Field(default=None, alias="containedSeconds")
    acknowledged_seconds: float | None = Field(default=None, alias="acknowledgedSeconds")
    levers: list[DrillLever] = Field(default_factory=list)
    evidence: DrillCheck | None = None
    trace: DrillCheck | None = None
    released: bool | None = None
    message: str = ""


class AgentDrillStatus(ApiModel):
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    phase: str | None = Field(default=None, description="The last run's result, for printer columns.")
    runs: int = 0
    last_run: DrillRun | None = Field(default=None, alias="lastRun")
    history: list[DrillRun] = Field(default_factory=list, description="The last runs, newest first (at most 10).")
    next_run_at: str | None = Field(default=None, alias="nextRunAt")
    conditions: list[Condition] = Field(
        default_factory=list, description="LastRunPassed: True when the last finished run passed."
    )


class AgentDrill(ApiModel):
    """A drill: opens an incident on the agent (shadow and revoke by default), measures time to containment and to
    the runtime's acknowledgement, checks the evidence, releases, and records the result."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = Field(default="tourniquet.dev/v1alpha1", alias="apiVersion")
    kind: str = "AgentDrill"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: AgentDrillSpec
    status: AgentDrillStatus | None = None
