"""The redeploy gate's I/O: run the candidate revision's evaluation Job, read its verdict, record a pass.

Called from the agent's reconcile between pinning and wiring (see :func:`gate_pass`). It reads and writes only
when spec.evaluation is set and an unproven revision is about to roll out, so an incident pass pays nothing.
The decisions are in :mod:`tourniquet.domain.gate`.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime
from typing import Any

from tourniquet.adapters.kube import AGENTREGRESSIONCASES, CONFIGMAPS, JOBS, PODS, ApiError, KubeApi
from tourniquet.domain import gate, regression
from tourniquet.domain.agent import BundlePlan
from tourniquet.domain.bundles import StoredRevision
from tourniquet.domain.containment import Containment
from tourniquet.models import AgentDeploymentSpec

log = logging.getLogger(__name__)


async def regression_cases(api: KubeApi, namespace: str, agent: str) -> list[dict[str, Any]]:
    """The agent's regression cases (AgentRegressionCases naming it), as the eval command gets them."""
    return regression.cases_of(await api.list(AGENTREGRESSIONCASES, namespace), agent)


async def gate_pass(
    api: KubeApi,
    body: dict[str, Any],
    spec: AgentDeploymentSpec,
    plan: BundlePlan,
    stored: list[StoredRevision],
    current: int | None,
    containment: Containment,
    now: datetime,
    actions: list[str],
) -> gate.GateOutcome:
    """Whether the revision the bundle plan would roll out is held, and the BundleGated condition that says so."""
    meta = body["metadata"]
    namespace, agent = meta["namespace"], meta["name"]
    step = gate.plan_gate(
        spec.evaluation,
        plan.active_revision,
        current,
        stored,
        incident_rollback=bool(containment.rollbacks) and plan.reason == "RolledBack",
    )
    if step.kind == "off":
        return gate.GateOutcome()
    if step.kind in ("settled", "exempt"):
        return gate.GateOutcome(False, (False, step.reason, step.message))
    assert spec.evaluation is not None and step.revision is not None
    revision = next(r for r in stored if r.revision == step.revision)

    if step.kind == "override":
        override = spec.evaluation.override
        assert override is not None
        detail = gate.override_record(override.by, override.reason, now)
        stored = await _record(api, namespace, stored, revision, gate.OVERRIDDEN, detail)
        who = f"{detail['by']}: {override.reason}"
        message = f"revision {revision.revision} rolled out without passing its evaluation: overridden by {who}"
        actions.append(f"Overrode the evaluation of bundle revision {revision.revision}: {who}")
        evaluation = {"revision": revision.revision, "state": "Overridden", "message": who}
        return gate.GateOutcome(False, (False, "EvaluationOverridden", message), evaluation, stored)

    problems = gate.template_problems(spec.evaluation.job_template)
    if problems:
        return gate.invalid(revision.revision, "; ".join(problems))
    cases = await regression_cases(api, namespace, agent)
    case_names = [str(c.get("name")) for c in cases]
    cases_text = gate.cases_file(cases)
    name = gate.job_name(agent, revision.revision, revision.hash, cases_text, spec.evaluation.job_template)
    job = await api.get_or_none(JOBS, namespace, name)
    if job is None:
        bundle_cm = await api.get(CONFIGMAPS, namespace, revision.name)
        try:
            await api.create_or_get(
                CONFIGMAPS,
                namespace,
                gate.build_cases_configmap(namespace, name, agent, revision.revision, cases_text, bundle_cm),
            )
            job, _ = await api.create_or_get(
                JOBS,
                namespace,
                gate.build_job(namespace, name, agent, revision.revision, spec.evaluation, bundle_cm, len(cases)),
            )
        except ApiError as error:
            if error.status in (400, 422):  # the API server refused the template: it will never start
                return gate.invalid(revision.revision, f"the API server refused the Job: {error.message or error}")
            raise
        actions.append(
            f"Created evaluation Job {name} for bundle revision {revision.revision} ({len(cases)} regression case(s))"
        )
    uid = job["metadata"].get("uid")
    pods = await api.list(PODS, namespace, label_selector=f"{gate.JOB_UID_LABEL}={uid}") if uid else []
    verdict = gate.judge(gate.observe_job(job, pods), case_names)
    if verdict.state != "Passed":
        return gate.held(agent, revision.revision, verdict, name, len(cases))
    detail = gate.passed_record(name, len(cases), now)
    stored = await _record(api, namespace, stored, revision, gate.PASSED, detail)
    actions.append(f"Bundle revision {revision.revision} passed its evaluation (Job {name}): {verdict.message}")
    message = f"revision {revision.revision} passed its evaluation (Job {name}): {verdict.message}"
    evaluation = {"revision": revision.revision, "job": name, "cases": len(cases), "state": "Passed"}
    return gate.GateOutcome(False, (False, "EvaluationPassed", message), evaluation, stored)


async def _record(
    api: KubeApi,
    namespace: str,
    stored: list[StoredRevision],
    revision: StoredRevision,
    record: str,
    detail: dict[str, Any],
) -> list[StoredRevision]:
    """Record the outcome on the revision's bundle ConfigMap (its labels survive a lost status), before the
    revision rolls out."""
    await api.patch(CONFIGMAPS, namespace, revision.name, gate.record_patch(record, detail))
    return [dataclasses.replace(r, evaluation=record) if r is revision else r for r in stored]
