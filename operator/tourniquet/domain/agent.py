"""Decisions for one AgentDeployment: spec problems, the bundle decision, and its status (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from tourniquet.domain import bundles
from tourniquet.domain.conditions import rfc3339, set_condition
from tourniquet.domain.containment import Containment
from tourniquet.domain.errors import describe_validation_error
from tourniquet.models import (
    AgentDeploymentSpec,
    AgentDeploymentStatus,
    BundleStatus,
    RevisionRecord,
    RevisionVerdict,
    Severity,
)


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
        for name in playbook.revoke_tools or []:
            if name not in tools:
                problems.append(
                    f"response.{severity.value}.revokeTools names unknown tool {name!r} (tools in the bundle: {known})"
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
    """The bundle decision: what to pin, what runs, what is marked bad, and why."""

    data: dict[str, str]  # the new revision's ConfigMap data: built only when `create`
    sha256: str
    spec_revision: int
    create: bool  # pin spec.bundle as a new revision
    active_revision: int | None  # what consumers run; None when nothing can run yet
    reason: str  # BundlePinned reason: Pinned | RolledBack | BundleTooLarge | RollbackRefused | RevisionBad
    message: str
    pinned: bool = True  # BundlePinned status
    mark_bad: list[int] = field(default_factory=list)
    frozen: str | None = None  # why a new revision is held back while incidents are open


def plan_bundle(
    spec: AgentDeploymentSpec,
    stored: list[bundles.StoredRevision],
    highest_seen: int,
    *,
    current: int | None = None,
    containment: Containment | None = None,
    sha256: str | None = None,
) -> BundlePlan:
    """Decide the revisions. Never raises: a refused bundle keeps the agent on what it runs now. `sha256`: the
    spec's bundle hash (:func:`bundles.bundle_sha256`) when the caller has it already (computed here if not).

    The ConfigMap data is built, and its size checked, only when the bundle is pinned as a new revision: a stored
    revision with the same hash holds the same bytes, and an incident's pass plans on the revisions without
    building them (an indented dump of the whole bundle)."""
    containment = containment or Containment()
    sha = sha256 or bundles.bundle_sha256(spec.bundle)
    by_revision = {r.revision: r for r in stored}
    if current not in by_revision:
        current = None
    planned = bundles.plan_revision(sha, stored, highest_seen)
    data: dict[str, str] = {}
    if planned.create:
        data = bundles.bundle_data(spec.bundle)
        too_large = bundles.size_problem(data)
        if too_large:
            return BundlePlan(data, sha, 0, False, current, "BundleTooLarge", too_large, pinned=False)
    spec_rev = planned.revision
    plan = BundlePlan(data, sha, spec_rev, planned.create, spec_rev, "Pinned", f"revision {spec_rev} pinned")
    known = dict(by_revision)
    if planned.create:
        known[spec_rev] = bundles.StoredRevision(spec_rev, sha, "", None)

    def verdict(revision: int) -> RevisionVerdict:
        return known[revision].verdict if revision in known else RevisionVerdict.UNKNOWN

    # 1. An open incident's rollback wins: it is how containment takes a bad revision out.
    for incident, target in containment.rollbacks:
        try:
            chosen = bundles.resolve_rollback(target, list(known.values()))
        except bundles.RollbackRefused as refused:
            plan.active_revision, plan.reason, plan.pinned = current, "RollbackRefused", False
            plan.message = f"incident {incident} asked for a rollback that is refused: {refused}"
            return plan
        plan.active_revision, plan.reason = chosen.revision, "RolledBack"
        plan.message = f"running revision {chosen.revision}, rolled back by incident {incident}"
        if current is not None and current != chosen.revision and verdict(current) != RevisionVerdict.GOOD:
            plan.mark_bad.append(current)
        return plan

    # 2. An explicit rollback in the spec.
    if spec.rollback is not None:
        try:
            chosen = bundles.resolve_rollback(spec.rollback, list(known.values()))
        except bundles.RollbackRefused as refused:
            plan.active_revision, plan.reason, plan.pinned = current, "RollbackRefused", False
            plan.message = f"rollback refused: {refused}"
            return plan
        wanted, plan.reason = chosen.revision, "RolledBack"
        plan.message = f"running revision {chosen.revision} by spec.rollback; spec.bundle is revision {spec_rev}"
    else:
        wanted = spec_rev
        if verdict(spec_rev) == RevisionVerdict.BAD and wanted != current:
            plan.active_revision, plan.reason, plan.pinned = current, "RevisionBad", False
            plan.message = (
                f"spec.bundle is revision {spec_rev}, which is marked bad; change the bundle (a fix gets a new "
                "revision) or roll back to a good revision"
            )
            return plan

    # 3. The freeze: while incidents are open, only a fix or a known-good revision rolls out.
    exempt = wanted in containment.fixes or verdict(wanted) == RevisionVerdict.GOOD
    if containment.incidents and current is not None and wanted != current and not exempt:
        open_ = ", ".join(containment.incidents)
        plan.frozen = (
            f"revision {wanted} is pinned but not rolled out while incident(s) {open_} are open; mark it as "
            f"the fix (spec.fix.revision: {wanted} on the incident) or roll back to a known-good revision"
        )
        plan.active_revision = current
        return plan
    plan.active_revision = wanted
    return plan


def history(stored: list[bundles.StoredRevision]) -> list[RevisionRecord]:
    return [
        RevisionRecord(
            revision=r.revision,
            hash=bundles.short_hash(r.hash),
            config_map=r.name,
            **({"created_at": r.created_at} if r.created_at else {}),
            verdict=r.verdict,
        )
        for r in sorted(stored, key=lambda r: r.revision)
    ]


def invalid_status(
    status: dict[str, Any], reason: str, message: str, *, now: datetime, generation: int | None
) -> dict[str, Any]:
    """The status of an agent whose spec cannot be acted on: everything else stays as it was."""
    conditions = list(status.get("conditions") or [])
    conditions = set_condition(conditions, "Ready", False, reason, message, now=now, generation=generation)
    if reason in ("BundleTooLarge", "RollbackRefused", "InvalidSpec"):
        conditions = set_condition(conditions, "BundlePinned", False, reason, message, now=now, generation=generation)
    built = AgentDeploymentStatus(conditions=conditions, observed_generation=generation)
    return {**status, **built.to_status()}


def agent_status(
    status: dict[str, Any],
    *,
    plan: BundlePlan,
    stored_after: list[bundles.StoredRevision],
    consumers: list[dict[str, Any]],
    containment: dict[str, Any] | None,
    contained: tuple[bool, str, str],
    incidents: list[str],
    now: datetime,
    generation: int | None,
) -> dict[str, Any]:
    """The whole new status of a reconciled agent; conditions keep their transition times. `incidents`: the open
    incidents on the agent (they hold its bundle)."""
    previous = status.get("bundle") or {}
    active = next((r for r in stored_after if r.revision == plan.active_revision), None)
    good = bundles.last_known_good(stored_after)
    bundle_fields: dict[str, Any] = {"spec_revision": plan.spec_revision} if plan.spec_revision else {}
    if active is not None:
        since = previous.get("activeSince") if previous.get("revision") == active.revision else None
        bundle_fields.update(
            revision=active.revision,
            hash=bundles.short_hash(active.hash),
            config_map=active.name,
            active_since=since or rfc3339(now),
        )
    if good is not None:
        bundle_fields["last_known_good"] = good.revision
    bundle_status = BundleStatus(**bundle_fields, history=history(stored_after))

    def cond(conditions: list[dict[str, Any]], type_: str, ok: bool, reason: str, message: str) -> list[dict[str, Any]]:
        return set_condition(conditions, type_, ok, reason, message, now=now, generation=generation)

    conditions = list(status.get("conditions") or [])
    if plan.pinned and active is not None:
        message = (
            plan.message
            if plan.reason == "RolledBack"
            else (
                f"revision {active.revision} (hash {bundles.short_hash(active.hash)}) pinned as ConfigMap {active.name}"
            )
        )
        conditions = cond(conditions, "BundlePinned", True, plan.reason, message)
    else:
        conditions = cond(conditions, "BundlePinned", False, plan.reason, plan.message)
    if incidents:
        held = plan.frozen or (
            f"incident(s) {', '.join(incidents)} open on this agent hold the bundle: a new revision is pinned but "
            "not rolled out unless it is an incident's fix or known good"
        )
        conditions = cond(conditions, "BundleFrozen", True, "IncidentOpen", held)
    else:
        conditions = cond(conditions, "BundleFrozen", False, "NotFrozen", "no open incident holds the bundle")
    conditions = cond(conditions, "Contained", *contained)
    if not plan.pinned:
        ready = (False, plan.reason, plan.message)
    elif active is None:
        ready = (False, "NoRevision", "no bundle revision can run yet")
    else:
        ready = (
            True,
            "Reconciled",
            f"revision {active.revision} wired into {len(consumers)} consumer(s); "
            "egress policy and control ConfigMap in place",
        )
    built = AgentDeploymentStatus(
        observed_generation=generation,
        bundle=bundle_status,
        consumers=consumers,
        **({"containment": containment} if containment is not None else {}),
        conditions=cond(conditions, "Ready", *ready),
    )
    new = {**status, **built.to_status()}
    if containment is None:
        new.pop("containment", None)
    return new


def verdict_label(verdict: RevisionVerdict) -> str | None:
    return {RevisionVerdict.GOOD: "good", RevisionVerdict.BAD: "bad"}.get(verdict)
