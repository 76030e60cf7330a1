"""Decisions for one AgentDeployment: spec problems, the bundle decision, and its status (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from tourniquet.domain import bundles
from tourniquet.domain.conditions import rfc3339, set_condition
from tourniquet.models import AgentDeploymentSpec, RevisionVerdict, Severity


def describe_validation_error(error: ValidationError, prefix: str = "spec") -> str:
    """One line per problem, each naming the field: 'spec.bundle.model.version: pin an exact ...'."""
    lines = []
    for problem in error.errors():
        path = ".".join([prefix, *(str(p) for p in problem["loc"])])
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"{path}: {message}")
    return "; ".join(lines)


def parse_spec(raw: dict[str, Any] | None) -> tuple[AgentDeploymentSpec | None, str | None]:
    try:
        return AgentDeploymentSpec.model_validate(raw or {}), None
    except ValidationError as error:
        return None, describe_validation_error(error)


def spec_problems(spec: AgentDeploymentSpec, missing_consumers: list[str], namespace: str) -> list[str]:
    """What is wrong with a spec that its schema alone cannot tell."""
    problems = [f"consumer {c} not found in namespace {namespace}" for c in missing_consumers]
    tools = {t.name for t in spec.bundle.tools}
    known = ", ".join(sorted(tools)) or "none"
    for severity in Severity:
        playbook = spec.playbook(severity)
        for tool in playbook.revoke_tools or []:
            if tool not in tools:
                problems.append(
                    f"response.{severity.value}.revokeTools names unknown tool {tool!r} (tools in the bundle: {known})"
                )
    for tool in spec.bundle.tools:
        if tool.compensation and tool.compensation.tool and tool.compensation.tool not in tools:
            problems.append(
                f"bundle.tools[{tool.name}].compensation.tool names unknown tool {tool.compensation.tool!r} "
                f"(tools in the bundle: {known})"
            )
    return problems


@dataclass
class BundlePlan:
    data: dict[str, str]
    sha256: str
    spec_revision: int
    create: bool
    active: bundles.StoredRevision | None  # None: the spec revision, about to be created
    active_revision: int
    reason: str  # Pinned | RolledBack
    message: str
    prune: list[bundles.StoredRevision] = field(default_factory=list)


class BundleRefused(Exception):
    """The bundle decision cannot go ahead; `reason` is the condition reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def plan_bundle(
    spec: AgentDeploymentSpec, stored: list[bundles.StoredRevision], highest_seen: int
) -> BundlePlan:
    data = bundles.bundle_data(spec.bundle)
    too_large = bundles.size_problem(data)
    if too_large:
        raise BundleRefused("BundleTooLarge", too_large)
    sha = bundles.bundle_sha256(spec.bundle)
    revision = bundles.plan_revision(sha, stored, highest_seen)
    if spec.rollback is not None:
        try:
            target = bundles.resolve_rollback(spec.rollback, stored)
        except bundles.RollbackRefused as refused:
            raise BundleRefused("RollbackRefused", f"rollback refused: {refused}") from None
        active, active_revision, reason = target, target.revision, "RolledBack"
        message = f"running revision {target.revision} by spec.rollback; spec.bundle is revision {revision.revision}"
    else:
        spec_stored = next((r for r in stored if r.revision == revision.revision and not revision.create), None)
        active, active_revision, reason = spec_stored, revision.revision, "Pinned"
        message = ""  # agent_status words it once the ConfigMap exists
    after_create = list(stored)
    if revision.create:
        after_create.append(bundles.StoredRevision(revision.revision, sha, "", None))
    good = bundles.last_known_good(after_create)
    keep = {active_revision} | ({good.revision} if good else set())
    return BundlePlan(
        data=data,
        sha256=sha,
        spec_revision=revision.revision,
        create=revision.create,
        active=active,
        active_revision=active_revision,
        reason=reason,
        message=message,
        prune=[r for r in bundles.plan_prune(after_create, spec.revision_history_limit, keep) if r.name],
    )


def history(stored: list[bundles.StoredRevision]) -> list[dict[str, Any]]:
    return [
        {
            "revision": r.revision,
            "hash": bundles.short_hash(r.hash),
            "configMap": r.name,
            **({"createdAt": r.created_at} if r.created_at else {}),
            "verdict": r.verdict.value,
        }
        for r in sorted(stored, key=lambda r: r.revision)
    ]


def invalid_status(
    status: dict[str, Any], reason: str, message: str, *, now: datetime, generation: int | None
) -> dict[str, Any]:
    """The status of an agent whose spec cannot be acted on: everything else stays as it was."""
    new = dict(status)
    conditions = list(status.get("conditions") or [])
    conditions = set_condition(conditions, "Ready", False, reason, message, now=now, generation=generation)
    if reason in ("BundleTooLarge", "RollbackRefused", "InvalidSpec"):
        conditions = set_condition(conditions, "BundlePinned", False, reason, message, now=now, generation=generation)
    new["conditions"] = conditions
    new["observedGeneration"] = generation
    return new


def agent_status(
    status: dict[str, Any],
    *,
    plan: BundlePlan,
    stored_after: list[bundles.StoredRevision],
    consumers: list[dict[str, Any]],
    extra_conditions: list[tuple[str, bool, str, str]],
    now: datetime,
    generation: int | None,
) -> dict[str, Any]:
    """The whole new status of a reconciled agent."""
    previous = status.get("bundle") or {}
    active = next(r for r in stored_after if r.revision == plan.active_revision)
    active_since = previous.get("activeSince") if previous.get("revision") == active.revision else None
    good = bundles.last_known_good(stored_after)
    bundle_status = {
        "revision": active.revision,
        "hash": bundles.short_hash(active.hash),
        "configMap": active.name,
        "specRevision": plan.spec_revision,
        "activeSince": active_since or rfc3339(now),
        **({"lastKnownGood": good.revision} if good else {}),
        "history": history(stored_after),
    }
    conditions = list(status.get("conditions") or [])
    message = (
        f"revision {active.revision} (hash {bundles.short_hash(active.hash)}) pinned as ConfigMap {active.name}"
        if plan.reason == "Pinned"
        else plan.message
    )
    conditions = set_condition(conditions, "BundlePinned", True, plan.reason, message, now=now, generation=generation)
    ready, ready_reason, ready_message = True, "Reconciled", (
        f"revision {active.revision} wired into {len(consumers)} consumer(s); egress policy and control in place"
    )
    for type_, ok, reason, text in extra_conditions:
        conditions = set_condition(conditions, type_, ok, reason, text, now=now, generation=generation)
    new = dict(status)
    new.update(
        observedGeneration=generation,
        bundle=bundle_status,
        consumers=consumers,
    )
    new["conditions"] = set_condition(
        conditions, "Ready", ready, ready_reason, ready_message, now=now, generation=generation
    )
    return new


def verdict_label(verdict: RevisionVerdict) -> str | None:
    return {RevisionVerdict.GOOD: "good", RevisionVerdict.BAD: "bad"}.get(verdict)
