"""Review and prevent: the redeploy gate (an agent's evaluation Job), and what it reports.

Kept apart from `agentdeployment` so the review features (the gate, regression cases, readiness, drills,
postmortems) grow here without touching the core models more than a field each.
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import ConfigDict, Field, field_validator

from tourniquet.models.common import PRESERVE_UNKNOWN, ApiModel, cel, validations

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

