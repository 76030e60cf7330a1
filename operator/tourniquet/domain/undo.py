"""An incident's undo, as its status shows it: blast radius, the plan, the approval and the Job's progress (pure).

The reconciler (``tourniquet.reconcilers.undo``) reads, in one pass, the incident's ledger (the blast radius,
the current plan for ``spec.compensate``'s selection and how far the ledger says each planned action got) and
the compensation Job; these functions decide what to do about the approval (:func:`decide_compensation`) and
compute the status from what was read (:func:`undo_status`). Nothing here reports what was not observed: the
counts are the ledger's, the Job's failure is the Job's own condition, and a ledger that could not be read
changes nothing but the ``LedgerUnavailable`` condition (the last complete observation stays, with its time).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tourniquet.domain.blastradius import BlastRadiusSummary
from tourniquet.domain.compensation import CompensationPlan, checklist_item
from tourniquet.domain.conditions import condition_is, find_condition, set_condition
from tourniquet.domain.incident import micro_time
from tourniquet.models.agentincident import BlastRadius, BlastWindow, CompensationPlanStatus, CompensationStatus

TERMINAL = ("done", "irreversible", "skipped")


@dataclass(frozen=True)
class LedgerRead:
    """What one pass read from the ledger: everything, or an error and nothing."""

    error: str | None = None  # the ledger (or its Secret) could not be read: why, for a person
    reason: str = ""  # CamelCase, for the LedgerUnavailable condition
    blast: BlastRadiusSummary | None = None
    plan: CompensationPlan | None = None
    plan_error: str | None = None  # the selection or the declarations cannot make a plan
    progress: Mapping[str, int] | None = None  # the current plan's actions by state in the ledger


@dataclass(frozen=True)
class JobSeen:
    """The compensation Job as read (or as just created)."""

    name: str
    exists: bool
    active: int = 0
    failed_message: str | None = None  # its Failed condition's message, when it has failed for good
    created: bool = False  # this pass created it


class Verdict(str, enum.Enum):
    NO_LEDGER = "LedgerUnavailable"
    INVALID = "InvalidPlan"
    AWAITING_APPROVAL = "AwaitingApproval"
    NOTHING = "NothingToCompensate"
    PLAN_CHANGED = "PlanChanged"
    CREATE_JOB = "CreateJob"
    RUNNING = "Running"
    FAILED = "Failed"
    COMPLETE = "Complete"
    JOB_UNAVAILABLE = "JobUnavailable"  # the Job could not be read or created (an API error): retried


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    message: str = ""


def following(status: Mapping[str, Any]) -> bool:
    """An approved plan's Job is under way (not yet complete or failed for good): a resolved incident is still
    read until it is, so its status reports how the compensation ended."""
    conditions = list(status.get("conditions") or [])
    running = find_condition(conditions, "Compensated") or {}
    job = (status.get("compensation") or {}).get("job")
    return bool(job) and running.get("status") == "False" and running.get("reason") in ("Running", "JobUnavailable")


def _short(plan_hash: str) -> str:
    return plan_hash[:16] + "…"


def _done(progress: Mapping[str, int] | None, planned: int) -> bool:
    """Every planned action is done, irreversible or skipped in the ledger."""
    if progress is None:
        return False
    return sum(progress.get(state, 0) for state in TERMINAL) >= planned


def decide_compensation(
    incident: str,
    compensate: Mapping[str, Any] | None,
    read: LedgerRead,
    job: JobSeen | None,
) -> Decision:
    """What to do about ``spec.compensate``: nothing until approved; a Job only for the approved plan, and only
    when its hash is the current plan's; never a second Job (its name is the plan's), never one for a plan whose
    every action the ledger already shows compensated."""
    compensate = compensate or {}
    approved = bool(compensate.get("approved"))
    approved_hash = str(compensate.get("planHash") or "")
    if read.error is not None:
        return Decision(Verdict.NO_LEDGER, f"the ledger cannot be read: {read.error}; nothing is executed until it can")
    if read.plan_error is not None or read.plan is None:
        return Decision(Verdict.INVALID, f"{read.plan_error or 'no plan'}; nothing was executed")
    plan = read.plan
    counts = plan.counts()
    approve = f"kubectl tourniquet compensate {incident.split('/')[-1]}"
    if not approved:
        if not plan.items:
            return Decision(Verdict.NOTHING, "no action in the window matches the selection")
        return Decision(
            Verdict.AWAITING_APPROVAL,
            f"plan {_short(plan.hash)}: {counts['planned']} to reverse, {counts['irreversible']} irreversible, "
            f"{counts['skipped']} skipped; nothing runs until a person approves it "
            f"({approve} shows it; --approve {plan.hash} approves it)",
        )
    if approved_hash != plan.hash:
        running = f"; Job {job.name} of the approved plan exists" if job is not None and job.exists else ""
        return Decision(
            Verdict.PLAN_CHANGED,
            f"the approved plan {_short(approved_hash)} is not the current plan {_short(plan.hash)} "
            f"({counts['actions']} actions, {counts['planned']} to reverse){running}; nothing new was executed: "
            f"review the plan in status.compensation.plan and approve its hash ({approve} --approve {plan.hash})",
        )
    if _done(read.progress, len(plan.items)):
        return Decision(Verdict.COMPLETE, "every planned action is compensated, irreversible or skipped (ledger)")
    if job is None or not job.exists:
        return Decision(Verdict.CREATE_JOB, "")
    if job.failed_message is not None:
        return Decision(Verdict.FAILED, f"Job {job.name} failed: {job.failed_message}")
    return Decision(Verdict.RUNNING, f"Job {job.name}")


def _blast_dict(blast: BlastRadiusSummary, now: datetime) -> dict[str, Any]:
    window = BlastWindow(
        start=micro_time(blast.start),
        source=blast.window_source,
        **({"end": micro_time(blast.end)} if blast.end is not None else {}),
    )
    radius = BlastRadius(
        actions=blast.actions,
        by_tool=blast.by_tool(),
        subjects=blast.subjects,
        reversible=blast.reversible,
        irreversible=blast.irreversible,
        tools=[t.to_model() for t in blast.tools],
        window=window,
        observed_at=micro_time(now),
        **({"amounts": blast.amounts()} if blast.amounts() else {}),
    )
    return radius.to_status()


def _plan_dict(plan: CompensationPlan) -> dict[str, Any]:
    counts = plan.counts()
    return CompensationPlanStatus(
        hash=plan.hash,
        actions=counts["actions"],
        planned=counts["planned"],
        irreversible=counts["irreversible"],
        skipped=counts["skipped"],
        by_tool=dict(plan.by_tool),
        checklist=[checklist_item(c) for c in plan.checklist],
    ).to_status()


def _keep_time(new: dict[str, Any] | None, old: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``observedAt`` moves only when what was observed changed (a pass over an unchanged ledger writes nothing)."""
    if new is None or not old:
        return new
    strip = {k: v for k, v in new.items() if k != "observedAt"}
    if strip == {k: v for k, v in old.items() if k != "observedAt"} and old.get("observedAt"):
        return {**strip, "observedAt": old["observedAt"]}
    return new


@dataclass
class UndoStatus:
    """The fields of the incident's status this module owns, and the timeline entries to add."""

    blast_radius: dict[str, Any] | None
    compensation: dict[str, Any] | None
    conditions: list[dict[str, Any]]
    notes: list[tuple[str, str, str | None]] = field(default_factory=list)
    retry: str | None = None  # the ledger could not be read: retry the pass (with backoff)
    counted: dict[str, int] = field(default_factory=dict)  # compensations newly observed, by outcome (metrics)


def undo_status(
    status: Mapping[str, Any],
    read: LedgerRead,
    decision: Decision,
    job: JobSeen | None,
    *,
    approved_hash: str | None,
    now: datetime,
    generation: int | None,
) -> UndoStatus:
    """The incident's blastRadius, compensation and their conditions from this pass's reads."""
    conditions = list(status.get("conditions") or [])
    timeline = list(status.get("timeline") or [])
    notes: list[tuple[str, str, str | None]] = []

    def cond(type_: str, ok: bool, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type_, ok, reason, message, now=now, generation=generation)

    def noted(event: str, message: str) -> bool:
        return any(e.get("event") == event and e.get("message") == message for e in timeline)

    previous_blast = status.get("blastRadius")
    previous_comp = dict(status.get("compensation") or {})
    if read.error is not None:
        if not condition_is(conditions, "LedgerUnavailable"):
            notes.append(("LedgerUnavailable", f"{read.error}; retried with backoff", None))
        cond("LedgerUnavailable", True, read.reason or "Unreachable", f"{read.error}; retried with backoff")
        if find_condition(conditions, "Compensated") is None:
            cond("Compensated", False, Verdict.NO_LEDGER.value, decision.message)
        # The last complete observation stays (with its observedAt); nothing partial is written.
        return UndoStatus(previous_blast, previous_comp or None, conditions, notes, retry=read.error)

    if find_condition(conditions, "LedgerUnavailable") is not None:
        cond("LedgerUnavailable", False, "Read", "the ledger was read")
    blast = _blast_dict(read.blast, now) if read.blast is not None else previous_blast
    if read.blast is not None:
        closed = read.blast.end is not None
        was_closed = bool(((previous_blast or {}).get("window") or {}).get("end"))
        if not any(e.get("event") == "BlastRadius" for e in timeline) or (closed and not was_closed):
            window = blast["window"]  # type: ignore[index]
            until = f" to {window['end']}" if closed else " (still open: not contained yet)"
            notes.append(
                ("BlastRadius", f"{read.blast.describe()}; window from {window['start']} ({window['source']}){until}",
                 None)
            )

    compensation: dict[str, Any] = {}
    plan = read.plan
    if plan is not None:
        compensation["plan"] = _plan_dict(plan)
        counts = plan.counts()
        previous_hash = ((previous_comp.get("plan") or {}).get("hash"))
        closed = read.blast is not None and read.blast.end is not None
        was_closed = bool(((previous_blast or {}).get("window") or {}).get("end"))
        if plan.items and closed and (previous_hash != plan.hash or not was_closed):
            notes.append(
                (
                    "CompensationPlanned",
                    f"plan {_short(plan.hash)}: {counts['actions']} actions, {counts['planned']} to reverse, "
                    f"{counts['irreversible']} irreversible, {counts['skipped']} skipped",
                    None,
                )
            )
    if approved_hash:
        compensation["approvedHash"] = approved_hash
    if job is not None and job.exists:
        compensation["job"] = job.name
    elif previous_comp.get("job") and previous_comp.get("approvedHash") == approved_hash:
        compensation["job"] = previous_comp["job"]
    counted: dict[str, int] = {}
    following = decision.verdict in (Verdict.RUNNING, Verdict.FAILED, Verdict.COMPLETE, Verdict.CREATE_JOB)
    if following and plan is not None and read.progress is not None:
        progress = {state: int(read.progress.get(state, 0)) for state in ("done", "failed", "irreversible", "skipped")}
        progress["pending"] = max(0, len(plan.items) - sum(progress.values()))
        compensation.update(planned=len(plan.items), **progress)
        for state in (*TERMINAL, "failed"):
            delta = progress[state] - int(previous_comp.get(state) or 0)
            if delta > 0 and previous_comp.get("approvedHash") == approved_hash:
                counted[state] = delta
            elif progress[state] and previous_comp.get("approvedHash") != approved_hash:
                counted[state] = progress[state]
    elif previous_comp.get("approvedHash") == approved_hash and approved_hash:
        for key in ("planned", "done", "failed", "irreversible", "skipped", "pending"):
            if key in previous_comp:
                compensation[key] = previous_comp[key]

    blast = _keep_time(blast, previous_blast)
    compensation = _keep_time({**compensation, "observedAt": micro_time(now)}, previous_comp) or {}
    compensation = CompensationStatus.model_validate(compensation).to_status()

    verdict, message = decision.verdict, decision.message
    if verdict == Verdict.COMPLETE:
        text = (
            f"{compensation.get('done', 0)} reversed, {compensation.get('irreversible', 0)} irreversible (see the "
            f"checklist), {compensation.get('skipped', 0)} skipped, of {compensation.get('planned', 0)} planned"
        )
        if not condition_is(conditions, "Compensated"):
            notes.append(("Compensated", text, None))
        cond("Compensated", True, "Complete", text)
    elif verdict == Verdict.NOTHING:
        cond("Compensated", True, verdict.value, message)
    elif verdict in (Verdict.RUNNING, Verdict.CREATE_JOB):
        text = (
            f"{message or 'the Job'}: {compensation.get('done', 0)} of {compensation.get('planned', 0)} reversed or "
            f"settled so far, {compensation.get('failed', 0)} failed (retried), "
            f"{compensation.get('pending', 0)} pending (ledger)"
        )
        if job is not None and job.created:
            notes.append(("CompensationStarted", f"Job {job.name} runs plan {_short(approved_hash or '')}", None))
        cond("Compensated", False, "Running", text)
    elif verdict == Verdict.JOB_UNAVAILABLE:
        cond("Compensated", False, verdict.value, message)
        return UndoStatus(blast, compensation, conditions, notes, retry=message, counted=counted)
    elif verdict == Verdict.FAILED:
        text = f"{message}; {compensation.get('failed', 0)} failed, {compensation.get('pending', 0)} pending (ledger)"
        if not noted("Failed", text):
            notes.append(("Failed", text, None))
        cond("Compensated", False, verdict.value, text)
    else:  # INVALID, PLAN_CHANGED, AWAITING_APPROVAL
        if verdict in (Verdict.INVALID, Verdict.PLAN_CHANGED) and not noted("CompensationRefused", message):
            notes.append(("CompensationRefused", message, None))
        cond("Compensated", False, verdict.value, message)
    return UndoStatus(blast, compensation, conditions, notes, counted=counted)
