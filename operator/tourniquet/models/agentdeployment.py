"""AgentDeployment: one AI-agent workload, its pinned bundle, its playbook and its detection rules."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from tourniquet.models.bundle import Bundle
from tourniquet.models.common import (
    DNS_SUBDOMAIN,
    PRESERVE_UNKNOWN,
    ApiModel,
    Condition,
    Lever,
    RollbackTarget,
    RollbackTo,
    Severity,
    cel,
    validations,
)
from tourniquet.models.review import Evaluation, EvaluationStatus, ReadinessSpec, ReadinessStatus


class ConsumerKind(str, enum.Enum):
    DEPLOYMENT = "Deployment"
    STATEFUL_SET = "StatefulSet"


class ConsumerRef(ApiModel):
    """A workload that pulls the agent's work. Drain scales it to zero; the bundle is mounted into it."""

    kind: ConsumerKind = ConsumerKind.DEPLOYMENT
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)


class LabelSelectorRequirement(ApiModel):
    key: str
    operator: str = Field(pattern=r"^(In|NotIn|Exists|DoesNotExist)$")
    values: list[str] | None = None


class LabelSelector(ApiModel):
    """A standard Kubernetes label selector."""

    match_labels: dict[str, str] | None = Field(default=None, alias="matchLabels")
    match_expressions: list[LabelSelectorRequirement] | None = Field(default=None, alias="matchExpressions")


class SecretKeyRef(ApiModel):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    key: str = Field(default="url", min_length=1, max_length=253)


class LedgerRef(ApiModel):
    """Where the agent's shared action ledger is: a Secret holding its postgresql:// URL."""

    secret_ref: SecretKeyRef = Field(alias="secretRef", description="The Secret and key holding the ledger's URL.")


class CompensationSettings(ApiModel):
    """How this agent's actions are compensated: the modules registering its compensators."""

    modules: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Python modules the compensation worker imports (they call @compensator(tool)).",
    )
    container: str | None = Field(
        default=None, description="The consumer's container to run the worker in (default: its first)."
    )


class AgentRef(ApiModel):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)


class CascadePlaybook(ApiModel):
    """What agents downstream (those that `dependsOn` this one) get when this one is contained."""

    contain: list[Lever] = Field(default_factory=lambda: [Lever.SHADOW])


class Playbook(ApiModel):
    """What happens automatically for an incident of one severity."""

    contain: list[Lever] = Field(default_factory=list)
    revoke_tools: list[str] | None = Field(
        default=None, alias="revokeTools", description="Tools to revoke; default: every write tool."
    )
    rollback: RollbackTo | None = None
    cascade: CascadePlaybook | None = None


def default_playbooks() -> dict[Severity, Playbook]:
    return {
        Severity.SEV1: Playbook(contain=[Lever.REVOKE_TOOLS, Lever.DRAIN]),
        Severity.SEV2: Playbook(contain=[Lever.SHADOW]),
        Severity.SEV3: Playbook(contain=[]),
    }


class Response(ApiModel):
    """The severity playbook. A missing severity takes the default: SEV1 revoke + drain, SEV2 shadow."""

    sev1: Playbook | None = Field(default=None, alias="SEV1")
    sev2: Playbook | None = Field(default=None, alias="SEV2")
    sev3: Playbook | None = Field(default=None, alias="SEV3")

    def for_severity(self, severity: Severity) -> Playbook:
        chosen = {Severity.SEV1: self.sev1, Severity.SEV2: self.sev2, Severity.SEV3: self.sev3}[severity]
        return chosen if chosen is not None else default_playbooks()[severity]


class DetectionTemplate(str, enum.Enum):
    RETRY_STORM = "retryStorm"
    LOOP = "loop"
    TOKEN_SURGE = "tokenSurge"
    BUDGET_EXCEEDED = "budgetExceeded"
    POLICY_DENIAL = "policyDenial"
    CONTEXT_GROWTH = "contextGrowth"


class DetectionRule(ApiModel):
    """A signal: raw PromQL (`expr`) or a built-in template with parameters."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("has(self.expr) != has(self.template)", "set exactly one of expr or template")
        )
    )

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    expr: str | None = Field(
        default=None,
        min_length=1,
        description="PromQL; any sample returned fires. $agent stands for this agent's name; samples whose agent "
        "label names another agent are ignored.",
    )
    template: DetectionTemplate | None = None
    params: dict[str, Any] = Field(default_factory=dict, json_schema_extra=PRESERVE_UNKNOWN)
    for_: str = Field(default="0s", alias="for", pattern=r"^([0-9]+(ms|s|m|h))+$")
    severity: Severity = Severity.SEV2
    incident_class: str = Field(default="other", alias="class")

    @model_validator(mode="after")
    def _one_source(self) -> DetectionRule:
        if (self.expr is None) == (self.template is None):
            raise ValueError("set exactly one of expr or template")
        return self


class Detection(ApiModel):
    interval_seconds: int = Field(default=15, ge=1, le=3600, alias="intervalSeconds")
    rules: list[DetectionRule] = Field(default_factory=list)


class Promotion(ApiModel):
    """When a revision becomes last-known-good: after it ran this long with no incident."""

    soak_seconds: int = Field(default=3600, ge=0, alias="soakSeconds")


class AgentDeploymentSpec(ApiModel):
    """The desired state: what the agent runs, what contains it, and what happens when it misbehaves."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                # `kind` may be absent (the CRD sets no defaults): absent means Deployment, as in pydantic.
                "!has(self.consumers) || self.consumers.all(c, self.consumers.exists_one(d, d.name == c.name"
                " && (has(d.kind) ? d.kind : 'Deployment') == (has(c.kind) ? c.kind : 'Deployment')))",
                "consumers must be unique",
                ".consumers",
            )
        )
    )

    # Bounded so the API server can cost the uniqueness rule above (n² name comparisons).
    consumers: list[ConsumerRef] = Field(
        default_factory=list, max_length=32, description="Workloads that pull the agent's work."
    )
    pod_selector: LabelSelector = Field(alias="podSelector", description="The agent's pods (NetworkPolicy target).")
    bundle: Bundle
    depends_on: list[AgentRef] = Field(default_factory=list, alias="dependsOn")
    detection: Detection | None = None
    response: Response | None = None
    rollback: RollbackTarget | None = Field(
        default=None,
        description="Run this revision instead of the one spec.bundle describes. Remove it to roll forward.",
    )
    promotion: Promotion | None = None
    evaluation: Evaluation | None = Field(
        default=None, description="The redeploy gate: a new revision rolls out only once this evaluation Job passes."
    )
    readiness: ReadinessSpec | None = Field(
        default=None, description="How fresh the kill-switch evidence must be for the readiness checklist."
    )
    revision_history_limit: int = Field(default=10, ge=1, le=100, alias="revisionHistoryLimit")
    ledger: LedgerRef | None = Field(
        default=None, description="The shared action ledger (blast radius, traces, compensation)."
    )
    compensation: CompensationSettings | None = None

    @field_validator("consumers")
    @classmethod
    def _unique_consumers(cls, consumers: list[ConsumerRef]) -> list[ConsumerRef]:
        if len({(c.kind, c.name) for c in consumers}) != len(consumers):
            raise ValueError("consumers must be unique")
        return consumers

    def playbook(self, severity: Severity) -> Playbook:
        return (self.response or Response()).for_severity(severity)


# ---------------------------------------------------------------- status


class RevisionVerdict(str, enum.Enum):
    UNKNOWN = "Unknown"
    GOOD = "Good"
    BAD = "Bad"


class RevisionRecord(ApiModel):
    revision: int
    hash: str
    config_map: str = Field(alias="configMap")
    created_at: str | None = Field(default=None, alias="createdAt")
    verdict: RevisionVerdict = RevisionVerdict.UNKNOWN


class BundleStatus(ApiModel):
    revision: int | None = Field(default=None, description="The active revision.")
    hash: str | None = None
    config_map: str | None = Field(default=None, alias="configMap")
    spec_revision: int | None = Field(
        default=None, alias="specRevision", description="The revision spec.bundle describes."
    )
    active_since: str | None = Field(default=None, alias="activeSince")
    last_known_good: int | None = Field(default=None, alias="lastKnownGood")
    history: list[RevisionRecord] = Field(default_factory=list)


class ConsumerStatus(ApiModel):
    kind: ConsumerKind
    name: str
    revision: int | None = Field(default=None, description="The bundle revision its pod template names.")


class LeverState(str, enum.Enum):
    PENDING = "Pending"
    APPLIED = "Applied"
    RELEASED = "Released"
    FAILED = "Failed"


class LeverStatus(ApiModel):
    name: Lever
    agent: str | None = None
    state: LeverState
    observed_at: str | None = Field(default=None, alias="observedAt")
    detail: str = ""
    incidents: list[str] = Field(default_factory=list, description="The open incidents that hold this lever.")


class ContainmentStatus(ApiModel):
    levers: list[LeverStatus] = Field(default_factory=list)
    incidents: list[str] = Field(default_factory=list, description="Open incidents on this agent.")


class RuleStatus(ApiModel):
    name: str
    expr: str | None = Field(default=None, description="The PromQL evaluated, ready to paste into Grafana.")
    state: str = Field(default="Inactive", description="Inactive | Pending | Firing | Invalid")
    active_at: str | None = Field(
        default=None, alias="activeAt", description="When the rule started returning samples (Pending or Firing)."
    )
    error: str | None = None


class DetectionStatus(ApiModel):
    rules: list[RuleStatus] = Field(default_factory=list)
    last_evaluated_at: str | None = Field(default=None, alias="lastEvaluatedAt")


class AgentDeploymentStatus(ApiModel):
    """What the operator observed. Written by the operator only."""

    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    bundle: BundleStatus | None = None
    consumers: list[ConsumerStatus] = Field(default_factory=list)
    containment: ContainmentStatus | None = None
    detection: DetectionStatus | None = None
    evaluation: EvaluationStatus | None = None
    readiness: ReadinessStatus | None = None
    conditions: list[Condition] = Field(default_factory=list)


class AgentDeployment(ApiModel):
    """An AI-agent workload: its pinned bundle (model, prompt, tools), its severity playbook and its detection
    rules."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = Field(default="tourniquet.dev/v1alpha1", alias="apiVersion")
    kind: str = "AgentDeployment"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: AgentDeploymentSpec
    status: AgentDeploymentStatus | None = None
