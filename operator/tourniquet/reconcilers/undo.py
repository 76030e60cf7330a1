"""An open incident's undo: read its agents' ledger, show the blast radius and the plan, run the approved plan.

Gather (the ledger's URL from the Secret the agents' ``spec.ledger`` names; from the ledger, in one pass, the
blast radius, the plan for ``spec.compensate``'s selection and each planned action's compensation state; the
compensation Job) → decide (``tourniquet.domain.undo``) → act (create the Job, under its deterministic name,
only for an approved plan whose hash is the current plan's) → report (the status fields, conditions and
timeline entries the incident's pass writes with the rest of its status).

Only the agents whose AgentDeployment sets ``spec.ledger``, or all of them when the operator has a default ledger
Secret (``TOURNIQUET_LEDGER_SECRET``, ``name`` or ``name/key``: the chart's ``ledger.defaultSecret``, read in the
agent's own namespace), take part; an incident on none of them has no undo.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from tourniquet import observability
from tourniquet.adapters.kube import JOBS, SECRETS, WORKLOADS, ApiError, KubeApi
from tourniquet.adapters.ledger import Ledgers, read_once
from tourniquet.domain.blastradius import incident_window
from tourniquet.domain.compensation import REVERSAL, CompensationPlan, PlanError
from tourniquet.domain.compensation_job import JobSpecError, compensation_job_name, desired_compensation_job
from tourniquet.domain.undo import Decision, JobSeen, LedgerRead, UndoStatus, Verdict, decide_compensation, undo_status
from tourniquet.runtime.compensate import CompensationRequest, gather_plan, plan_outcome
from tourniquet.runtime.ledger import LedgerError, SqlLedger, redacted_url
from tourniquet.undo import IncidentContext, UndoError, blast_radius, compensation_request

log = logging.getLogger(__name__)


DEFAULT_SECRET_ENV = "TOURNIQUET_LEDGER_SECRET"


def _default_ref() -> tuple[str, str] | None:
    """The ledger Secret of an agent that names none: the chart's ledger.defaultSecret, as ``name[/key]``."""
    name, _, key = os.environ.get(DEFAULT_SECRET_ENV, "").strip().partition("/")
    return (name, key or "url") if name else None


def _ledger_ref(agent: Mapping[str, Any]) -> tuple[str, str] | None:
    """The (Secret, key) holding the agent's ledger URL: its spec.ledger, else the operator's default."""
    ref = (((agent.get("spec") or {}).get("ledger") or {}).get("secretRef")) or {}
    return (str(ref["name"]), str(ref.get("key") or "url")) if ref.get("name") else _default_ref()


def _origin(name: str, key: str) -> str:
    return "the chart's ledger.defaultSecret" if _default_ref() == (name, key) else "spec.ledger"


class _NoLedger(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


async def _ledger_url(api: KubeApi, namespace: str, name: str, key: str) -> str:
    origin = _origin(name, key)
    try:
        secret = await api.get(SECRETS, namespace, name)
    except ApiError as error:
        if error.not_found:
            message = f"Secret {name} ({origin}) not found in namespace {namespace}"
            raise _NoLedger("SecretNotFound", message) from None
        if error.status == 403:
            raise _NoLedger(
                "SecretForbidden",
                f"the operator may not read Secret {name} ({origin}): list it in the chart's ledger.secretNames",
            ) from None
        raise _NoLedger("SecretUnreadable", f"Secret {name} ({origin}) could not be read: {error}") from None
    data = secret.get("data") or {}
    if key not in data:
        raise _NoLedger("SecretKeyMissing", f"Secret {name} ({origin}) has no key {key}")
    try:
        return base64.b64decode(data[key]).decode().strip()
    except (binascii.Error, UnicodeDecodeError):
        raise _NoLedger("SecretKeyInvalid", f"Secret {name} key {key} is not a ledger URL") from None


def _job_seen(name: str, job: Mapping[str, Any] | None, *, created: bool = False) -> JobSeen:
    if job is None:
        return JobSeen(name, exists=False)
    status = job.get("status") or {}
    failed = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Failed" and c.get("status") == "True"), None
    )
    message = None if failed is None else (failed.get("message") or failed.get("reason") or "failed")
    return JobSeen(name, exists=True, active=int(status.get("active") or 0), failed_message=message, created=created)


def _selection(compensate: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "tools": compensate.get("tools") or (),
        "subjects": compensate.get("subjects") or (),
        "bundle_revisions": compensate.get("bundleRevisions") or (),
        "duplicates_only": bool(compensate.get("duplicatesOnly")),
    }


async def _read(
    api: KubeApi,
    context: IncidentContext,
    ref: tuple[str, str],
    compensate: Mapping[str, Any],
    ledgers: Ledgers | None,
) -> tuple[LedgerRead, CompensationRequest | None]:
    try:
        url = await _ledger_url(api, context.namespace, *ref)
    except _NoLedger as missing:
        return LedgerRead(error=str(missing), reason=missing.reason), None
    request: CompensationRequest | None = None
    plan_error: str | None = None
    try:
        context.declarations()
        request = compensation_request(context, **_selection(compensate))
    except UndoError as error:
        plan_error = str(error)

    def read(ledger: SqlLedger) -> LedgerRead:
        blast = blast_radius(ledger, context) if plan_error is None else None
        if request is None:
            return LedgerRead(blast=blast, plan_error=plan_error)
        try:
            plan, _ = gather_plan(ledger, request)
        except PlanError as error:
            return LedgerRead(blast=blast, plan_error=str(error))
        outcome = plan_outcome(ledger, context.key, plan)
        progress = {s: getattr(outcome, s) for s in ("done", "failed", "irreversible", "skipped", "pending")}
        return LedgerRead(blast=blast, plan=plan, progress=progress)

    try:
        return await (ledgers.read(url, read) if ledgers is not None else read_once(url, read)), request
    except LedgerError as error:
        log.warning("AgentIncident %s: the ledger %s cannot be read: %s", context.key, redacted_url(url), error)
        return LedgerRead(error=str(error), reason="Unreachable"), None


async def _create_job(
    api: KubeApi,
    body: dict[str, Any],
    agents: Mapping[str, dict[str, Any]],
    plan: CompensationPlan,
    request: CompensationRequest,
    ref: tuple[str, str],
    job_name: str,
) -> tuple[Decision, JobSeen | None]:
    """Create the approved plan's Job (a repeat reads the one there: 409 AlreadyExists)."""
    namespace = body["metadata"]["namespace"]
    reversing = sorted({i.agent for i in plan.items if i.type == REVERSAL})
    if len(reversing) > 1:
        message = (
            f"the plan reverses actions of several agents ({', '.join(reversing)}), whose compensators run in "
            "their own images: narrow spec.compensate.tools to one agent's tools; nothing was executed"
        )
        return Decision(Verdict.INVALID, message), None
    agent = reversing[0] if reversing else sorted({i.agent for i in plan.items})[0]
    spec = agents[agent].get("spec") or {}
    settings = spec.get("compensation") or {}
    modules = list(settings.get("modules") or [])
    if reversing and not modules:
        message = (
            f"AgentDeployment {agent} names no compensator modules (spec.compensation.modules) for the "
            f"{plan.reversals} actions to reverse; nothing was executed"
        )
        return Decision(Verdict.INVALID, message), None
    consumers = spec.get("consumers") or []
    if not consumers:
        return Decision(Verdict.INVALID, f"AgentDeployment {agent} has no consumer to run the worker in"), None
    consumer = consumers[0]
    kind = consumer.get("kind", "Deployment")
    workload = await api.get_or_none(WORKLOADS[kind], namespace, consumer["name"])
    if workload is None:
        message = f"{kind} {consumer['name']} (the worker's image and environment) not found; nothing was executed"
        return Decision(Verdict.INVALID, message), None
    workload = {"kind": kind, **workload}
    try:
        job = desired_compensation_job(
            incident=body,
            agent=agent,
            workload=workload,
            request_json=request.to_json(),
            plan_hash=plan.hash,
            ledger_secret={"name": ref[0], "key": ref[1]},
            compensators=modules,
            container=settings.get("container"),
        )
    except JobSpecError as error:
        return Decision(Verdict.INVALID, f"{error}; nothing was executed"), None
    assert job["metadata"]["name"] == job_name
    written, created = await api.create_or_get(JOBS, namespace, job)
    if created:
        observability.COMPENSATION_JOBS.inc()
        log.info("Created compensation Job %s/%s for plan %s", namespace, job_name, plan.hash[:16])
    return Decision(Verdict.RUNNING, f"Job {job_name}"), _job_seen(job_name, written, created=created)


async def reconcile_undo(
    api: KubeApi,
    body: dict[str, Any],
    agents: Mapping[str, dict[str, Any] | None],
    *,
    now: datetime,
    ledgers: Ledgers | None = None,
) -> UndoStatus | None:
    """The undo part of an open incident's status, acting on an approval; None when no agent has a ledger.
    `ledgers`: the operator's open ledgers (None: the ledger is opened for this pass alone)."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    ledgered = {a: b for a, b in agents.items() if b is not None and _ledger_ref(b) is not None}
    if not ledgered:
        return None
    status = body.get("status") or {}
    compensate = (body.get("spec") or {}).get("compensate") or {}
    approved_hash = str(compensate.get("planHash") or "") if compensate.get("approved") else ""
    refs = {_ledger_ref(b) for b in ledgered.values()}
    request: CompensationRequest | None = None
    if len(refs) > 1:
        listing = ", ".join(f"{a}: Secret {_ledger_ref(b)[0]}" for a, b in sorted(ledgered.items()))  # type: ignore[index]
        read = LedgerRead(error=f"the agents name different ledgers ({listing})", reason="SeveralLedgers")
        ref = None
    else:
        ref = refs.pop()
        assert ref is not None
        try:
            window = incident_window(body)
        except ValueError as error:
            read = LedgerRead(error=str(error), reason="NoWindow")
        else:
            context = IncidentContext(namespace, name, body, dict(ledgered), window)
            read, request = await _read(api, context, ref, compensate, ledgers)
    job_name = compensation_job_name(name, approved_hash) if approved_hash else None
    job: JobSeen | None = None
    try:
        if job_name is not None and read.error is None:
            job = _job_seen(job_name, await api.get_or_none(JOBS, namespace, job_name))
        decision = decide_compensation(f"{namespace}/{name}", compensate, read, job)
        if decision.verdict == Verdict.CREATE_JOB:
            assert read.plan is not None and request is not None and ref is not None and job_name is not None
            decision, created = await _create_job(api, body, ledgered, read.plan, request, ref, job_name)
            job = created or job
    except ApiError as error:  # containment's status is still written; the Job is retried with backoff
        log.warning("AgentIncident %s/%s: the compensation Job %s: %s", namespace, name, job_name, error)
        decision = Decision(
            Verdict.JOB_UNAVAILABLE, f"the compensation Job {job_name} could not be read or created: {error}"
        )
    return undo_status(
        status, read, decision, job, approved_hash=approved_hash or None, now=now, generation=meta.get("generation")
    )


def merge_undo(new_status: dict[str, Any], undo: UndoStatus) -> dict[str, Any]:
    """The incident's status with the undo's fields and conditions (the timeline entries went in as notes)."""
    out = dict(new_status)
    for key, value in (("blastRadius", undo.blast_radius), ("compensation", undo.compensation)):
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    owned = {c["type"] for c in undo.conditions if c.get("type") in ("LedgerUnavailable", "Compensated")}
    conditions = [c for c in out.get("conditions") or [] if c.get("type") not in owned]
    conditions += [c for c in undo.conditions if c.get("type") in owned]
    out["conditions"] = sorted(conditions, key=lambda c: str(c.get("type")))
    return out


def count_compensations(undo: UndoStatus) -> None:
    for outcome, n in undo.counted.items():
        observability.COMPENSATIONS.labels(outcome).inc(n)
