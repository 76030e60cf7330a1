"""The redeploy gate (pure): which revision must pass its evaluation Job before it rolls out, the Job itself,
and the verdict read from what the Job reported.

A revision is held while it is *unproven*: neither known good, nor passed (or overridden) before. A rollback to a
known-good revision, and an open incident's rollback (containment), are never held. The evaluation Job has a
deterministic name per (revision, regression cases, template), so a repeat pass finds the Job it made, and a
revision that passed is recorded on its bundle ConfigMap (`tourniquet.dev/evaluation: passed`) and never
evaluated again.

How the Job reports, per case: its pod writes one JSON object to its termination message
(`/dev/termination-log`, at most 4096 bytes), either

    {"passed": ["case-a", "case-b"], "failed": [{"name": "case-c", "message": "refunded order 123 twice"}]}

(`failed` may also list bare names), or `{"cases": [{"name": ..., "passed": true|false, "message": ...}]}`;
`tourniquet.runtime.evaluation` writes it. Exit code 0: every case passed; 1: some case failed (the Job's
podFailurePolicy then fails the Job at once instead of retrying); anything else is an error the Job retries
(`backoffLimit`). A case missing from the report counts as failed ("not reported").
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import yaml

from tourniquet.domain import names
from tourniquet.domain.bundles import StoredRevision, canonical_json
from tourniquet.domain.conditions import rfc3339, set_condition
from tourniquet.models import RevisionVerdict
from tourniquet.models.review import Evaluation, EvaluationState, EvaluationStatus, FailedCase

COMPONENT_EVALUATION = "evaluation"
LABEL_EVALUATION = names.LABEL_EVALUATION  # on a bundle ConfigMap: passed | overridden
ANNOTATION_EVALUATION = f"{names.PREFIX}/evaluation"  # on a bundle ConfigMap: JSON, what was recorded and when
PASSED = "passed"
OVERRIDDEN = "overridden"

BUNDLE_MOUNT = "/etc/tourniquet/bundle"
CASES_MOUNT = "/etc/tourniquet/cases"
CASES_FILE = "cases.yaml"
REPORT_PATH = "/dev/termination-log"
REPORT_LIMIT = 4096  # what the kubelet keeps of a termination message
EXIT_CASES_FAILED = 1
BUNDLE_VOLUME = "tourniquet-bundle"
CASES_VOLUME = "tourniquet-cases"
DEFAULT_BACKOFF_LIMIT = 2
DEFAULT_DEADLINE_SECONDS = 1800
JOB_NAME_LIMIT = 63  # a Job's name becomes the value of its pods' job-name label
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
CONDITION = "BundleGated"

WAITING_PROBLEMS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "CrashLoopBackOff",
        "RunContainerError",
    }
)


# ---------------------------------------------------------------- the Job


def job_name(agent: str, revision: int, bundle_sha256: str, cases_text: str, job_template: dict[str, Any]) -> str:
    """`<agent>-eval-<revision>-<8 hex>`: the same revision, cases and template give the same Job."""
    digest = hashlib.sha256(canonical_json([bundle_sha256, cases_text, job_template]).encode()).hexdigest()[:8]
    suffix = f"-eval-{revision}-{digest}"
    return f"{agent[: JOB_NAME_LIMIT - len(suffix)].rstrip('-.')}{suffix}"


def cases_configmap_name(job: str) -> str:
    return f"{job}-cases"


def cases_file(cases: list[dict[str, Any]]) -> str:
    """The regression cases as the eval command reads them: a YAML list, sorted by name."""
    ordered = sorted(cases, key=lambda c: str(c.get("name")))
    return yaml.safe_dump(ordered, sort_keys=True, default_flow_style=False, allow_unicode=True) if ordered else "[]\n"


def template_problems(job_template: dict[str, Any]) -> list[str]:
    """What keeps the template from ever starting, said before any Job is created."""
    where = "spec.evaluation.jobTemplate"
    spec = job_template.get("spec")
    if not isinstance(spec, dict):
        return [f"{where}.spec is missing: give the Job's spec, with template.spec.containers"]
    template = spec.get("template")
    pod_spec = template.get("spec") if isinstance(template, dict) else None
    if not isinstance(pod_spec, dict):
        return [f"{where}.spec.template.spec is missing: give the eval pod's spec, with its containers"]
    containers = pod_spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return [f"{where}.spec.template.spec.containers is empty: name the container that runs the eval command"]
    problems = []
    for index, container in enumerate(containers):
        path = f"{where}.spec.template.spec.containers[{index}]"
        if not isinstance(container, dict):
            problems.append(f"{path} is not an object")
            continue
        if not container.get("name"):
            problems.append(f"{path}.name is required")
        if not container.get("image"):
            problems.append(f"{path}.image is required: the image with the eval command")
    return problems


def _owner(bundle_cm: dict[str, Any]) -> dict[str, Any]:
    """Owned by the revision's bundle ConfigMap: pruning the revision takes its evaluation with it. No
    blockOwnerDeletion (which would need the right to set finalizers on ConfigMaps)."""
    meta = bundle_cm["metadata"]
    return {"apiVersion": "v1", "kind": "ConfigMap", "name": meta["name"], "uid": meta["uid"]}


def evaluation_labels(agent: str, revision: int) -> dict[str, str]:
    return {
        names.LABEL_MANAGED_BY: names.MANAGED_BY,
        names.LABEL_AGENT: agent,
        names.LABEL_COMPONENT: COMPONENT_EVALUATION,
        names.LABEL_REVISION: str(revision),
    }


def build_cases_configmap(
    namespace: str, job: str, agent: str, revision: int, cases_text: str, bundle_cm: dict[str, Any]
) -> dict[str, Any]:
    return names.owned(
        "v1",
        "ConfigMap",
        cases_configmap_name(job),
        namespace,
        _owner(bundle_cm),
        labels=evaluation_labels(agent, revision),
        immutable=True,
        data={CASES_FILE: cases_text},
    )


def build_job(
    namespace: str,
    job: str,
    agent: str,
    revision: int,
    evaluation: Evaluation,
    bundle_cm: dict[str, Any],
    case_count: int,
) -> dict[str, Any]:
    """The evaluation Job: the agent's template, with the candidate bundle and the cases mounted."""
    template = copy.deepcopy(evaluation.job_template)
    meta = template.get("metadata") or {}
    spec: dict[str, Any] = template["spec"]
    labels = evaluation_labels(agent, revision)
    pod = spec.setdefault("template", {})
    pod_meta = pod.setdefault("metadata", {})
    pod_meta["labels"] = {**(pod_meta.get("labels") or {}), **labels}
    pod_spec = pod["spec"]
    pod_spec["restartPolicy"] = "Never"  # the podFailurePolicy needs it; the Job retries, not the kubelet
    ours = (BUNDLE_VOLUME, CASES_VOLUME)
    pod_spec["volumes"] = [v for v in pod_spec.get("volumes") or [] if v.get("name") not in ours] + [
        {"name": BUNDLE_VOLUME, "configMap": {"name": bundle_cm["metadata"]["name"]}},
        {"name": CASES_VOLUME, "configMap": {"name": cases_configmap_name(job)}},
    ]
    env = {
        "TOURNIQUET_AGENT": agent,
        "TOURNIQUET_BUNDLE": f"{BUNDLE_MOUNT}/bundle.json",
        "TOURNIQUET_BUNDLE_REVISION": str(revision),
        "TOURNIQUET_EVAL_CASES": f"{CASES_MOUNT}/{CASES_FILE}",
        "TOURNIQUET_EVAL_REPORT": REPORT_PATH,
    }
    for container in pod_spec["containers"]:
        mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") not in ours]
        container["volumeMounts"] = [
            *mounts,
            {"name": BUNDLE_VOLUME, "mountPath": BUNDLE_MOUNT, "readOnly": True},
            {"name": CASES_VOLUME, "mountPath": CASES_MOUNT, "readOnly": True},
        ]
        kept = [e for e in container.get("env") or [] if e.get("name") not in env]
        container["env"] = [*kept, *({"name": k, "value": v} for k, v in env.items())]
        container.setdefault("terminationMessagePolicy", "FallbackToLogsOnError")
    spec.setdefault("backoffLimit", DEFAULT_BACKOFF_LIMIT)
    spec.setdefault("activeDeadlineSeconds", DEFAULT_DEADLINE_SECONDS)
    spec.setdefault(
        "podFailurePolicy",
        {
            "rules": [
                # Cases failed: the verdict is in, retrying would only repeat it.
                {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [EXIT_CASES_FAILED]}},
                # Evicted, preempted, its node drained: not the eval's fault, not counted against backoffLimit.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
    )
    return names.owned(
        "batch/v1",
        "Job",
        job,
        namespace,
        _owner(bundle_cm),
        labels={**(meta.get("labels") or {}), **labels},
        annotations={**(meta.get("annotations") or {}), f"{names.PREFIX}/cases": str(case_count)},
        spec=spec,
    )


# ---------------------------------------------------------------- what the Job reported


@dataclass(frozen=True)
class Report:
    passed: frozenset[str]
    failed: dict[str, str]


def parse_report(text: str | None) -> Report | None:
    """A termination message in either form (see the module docstring); None when it is not one."""
    if not text:
        return None
    try:
        data = json.loads(text.strip().splitlines()[-1] if text.strip() else "")
    except (ValueError, IndexError):
        try:
            data = json.loads(text)
        except ValueError:
            return None
    if not isinstance(data, dict):
        return None
    passed: set[str] = set()
    failed: dict[str, str] = {}
    if isinstance(data.get("cases"), list):
        for case in data["cases"]:
            if isinstance(case, dict) and case.get("name"):
                if case.get("passed") is True:
                    passed.add(str(case["name"]))
                else:
                    failed[str(case["name"])] = str(case.get("message") or "")
    elif "passed" in data or "failed" in data:
        passed = {str(n) for n in data.get("passed") or [] if n}
        for entry in data.get("failed") or []:
            if isinstance(entry, dict) and entry.get("name"):
                failed[str(entry["name"])] = str(entry.get("message") or "")
            elif isinstance(entry, str) and entry:
                failed[entry] = ""
    else:
        return None
    return Report(frozenset(passed - set(failed)), failed)


@dataclass(frozen=True)
class JobView:
    """An evaluation Job as observed: finished or not, how, and what its pods reported."""

    name: str
    finished: str | None  # Complete | Failed | None (still running)
    reason: str = ""
    message: str = ""
    report: Report | None = None
    waiting: str | None = None  # a pod that cannot start, and why


def job_finished(job: dict[str, Any]) -> tuple[str | None, str, str]:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition["type"], str(condition.get("reason") or ""), str(condition.get("message") or "")
    return None, "", ""


def observe_job(job: dict[str, Any], pods: list[dict[str, Any]]) -> JobView:
    """The Job's state, the newest report among its pods' termination messages, and a pod stuck before starting."""
    finished, reason, message = job_finished(job)
    report = None
    waiting = None
    for pod in sorted(pods, key=lambda p: str(p["metadata"].get("creationTimestamp") or ""), reverse=True):
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            state = status.get("state") or {}
            terminated = state.get("terminated") or {}
            if report is None and terminated.get("message"):
                report = parse_report(terminated["message"])
            stuck = state.get("waiting") or {}
            if waiting is None and stuck.get("reason") in WAITING_PROBLEMS:
                waiting = f"pod {pod['metadata']['name']} cannot start: {stuck['reason']}" + (
                    f": {stuck['message']}" if stuck.get("message") else ""
                )
    return JobView(job["metadata"]["name"], finished, reason, message, report, waiting)


@dataclass(frozen=True)
class Verdict:
    state: str  # Passed | Failed | Error | Running
    failed: list[tuple[str, str]] = field(default_factory=list)
    message: str = ""


def judge(view: JobView, cases: list[str]) -> Verdict:
    """Passed only when the Job completed and every case is reported passed (no case: completion suffices)."""
    if view.finished is None:
        return Verdict("Running", message=view.waiting or "")
    why = f"{view.reason}: {view.message}".strip(": ")
    report = view.report
    if report is None:
        if view.finished == "Complete" and not cases:
            return Verdict("Passed", message="no regression case yet; the Job completed")
        if view.finished == "Complete":
            return Verdict(
                "Error",
                message="the Job completed but reported no per-case results (write them as JSON to its "
                "termination message, /dev/termination-log: see tourniquet.runtime.evaluation)",
            )
        return Verdict("Error", message=f"the Job failed without reporting results ({why or 'no reason given'})")
    failing = [(name, report.failed[name]) for name in sorted(report.failed)]
    failing += [(name, "not reported") for name in sorted(cases) if name not in report.passed | set(report.failed)]
    if failing:
        return Verdict("Failed", failing)
    if view.finished == "Failed":
        return Verdict("Error", message=f"the Job failed ({why}) though it reported every case passed")
    return Verdict("Passed", message=f"{len(report.passed)} case(s) passed")


# ---------------------------------------------------------------- the decision


@dataclass
class GateStep:
    """What the gate does about the revision the bundle plan would roll out."""

    kind: str  # off | settled | exempt | override | evaluate
    revision: int | None = None
    reason: str = ""  # the BundleGated reason when it does not hold anything
    message: str = ""


def evaluation_record(stored: StoredRevision | None) -> str | None:
    return stored.evaluation if stored is not None else None


def plan_gate(
    evaluation: Evaluation | None,
    candidate: int | None,
    current: int | None,
    stored: list[StoredRevision],
    *,
    incident_rollback: bool,
) -> GateStep:
    """Whether `candidate` (what the bundle plan would roll out instead of `current`) must be evaluated first."""
    if evaluation is None:
        return GateStep("off")
    by_revision = {r.revision: r for r in stored}
    if candidate is None or candidate == current:
        return settled(current, by_revision.get(current) if current is not None else None, evaluation)
    revision = by_revision.get(candidate)
    if incident_rollback:
        return GateStep(
            "exempt", candidate, "RolledBack", f"revision {candidate} rolls out ungated: an open incident rolled back"
        )
    if revision is not None and revision.verdict == RevisionVerdict.GOOD:
        return GateStep(
            "exempt", candidate, "KnownGood", f"revision {candidate} is known good: a rollback to it is never held"
        )
    record = evaluation_record(revision)
    if record == PASSED:
        return GateStep("exempt", candidate, "EvaluationPassed", f"revision {candidate} passed its evaluation before")
    if record == OVERRIDDEN:
        return GateStep("exempt", candidate, "EvaluationOverridden", f"revision {candidate} was overridden before")
    if evaluation.override is not None and evaluation.override.revision == candidate:
        return GateStep("override", candidate)
    return GateStep("evaluate", candidate)


def settled(current: int | None, revision: StoredRevision | None, evaluation: Evaluation | None = None) -> GateStep:
    """Nothing new to roll out: the condition speaks of what runs."""
    if current is None:
        return GateStep("settled", None, "NoRevision", "no bundle revision to evaluate yet")
    record = evaluation_record(revision)
    if record == PASSED:
        return GateStep("settled", current, "EvaluationPassed", f"revision {current} runs; it passed its evaluation")
    if record == OVERRIDDEN:
        message = f"revision {current} runs; its evaluation was overridden"
        override = evaluation.override if evaluation is not None else None
        if override is not None and override.revision == current:
            message += f" by {override.by or 'someone not recorded'}: {override.reason}"
        return GateStep("settled", current, "EvaluationOverridden", message)
    if revision is not None and revision.verdict == RevisionVerdict.GOOD:
        return GateStep("settled", current, "KnownGood", f"revision {current} runs; it is known good")
    return GateStep(
        "settled",
        current,
        "NotGated",
        f"revision {current} runs (it rolled out before the gate applied to it); the next new revision is evaluated",
    )


def override_record(by: str | None, reason: str, now: datetime) -> dict[str, str]:
    return {"by": by or "not recorded (set spec.evaluation.override.by)", "reason": reason, "at": rfc3339(now)}


def passed_record(job: str, cases: int, now: datetime) -> dict[str, Any]:
    return {"job": job, "cases": cases, "at": rfc3339(now)}


def record_patch(record: str, detail: dict[str, Any]) -> dict[str, Any]:
    """The bundle ConfigMap's metadata once its revision passed (or was overridden): the durable record."""
    return {
        "metadata": {
            "labels": {LABEL_EVALUATION: record},
            "annotations": {ANNOTATION_EVALUATION: json.dumps(detail, sort_keys=True)},
        }
    }


@dataclass
class GateOutcome:
    """What one pass of the gate decided and observed."""

    hold: bool = False
    condition: tuple[bool, str, str] | None = None  # BundleGated (status, reason, message); None: gate off
    evaluation: dict[str, Any] | None = None  # status.evaluation (None: keep what was there)
    stored: list[StoredRevision] | None = None  # the revisions after recording, when something was recorded


def override_hint(agent: str, revision: int) -> str:
    return (
        f"fix the bundle (a new revision is evaluated anew) or, in an emergency, override: kubectl tourniquet "
        f"gate override {agent} --revision {revision} --reason '...'"
    )


def held(agent: str, revision: int, verdict: Verdict, job: str, cases: int) -> GateOutcome:
    """The gate holds `revision`: the condition and status.evaluation say why."""
    if verdict.state == "Running":
        message = f"revision {revision} is pinned but held until its evaluation passes: Job {job} runs {cases} case(s)"
        if verdict.message:
            message += f"; {verdict.message}"
        running = EvaluationStatus(revision=revision, job=job, cases=cases, state=EvaluationState.RUNNING)
        return GateOutcome(True, (True, "EvaluationRunning", message), running.to_status())
    if verdict.state == "Failed":
        listed = ", ".join(f"{n} ({m})" if m else n for n, m in verdict.failed)
        message = (
            f"revision {revision} is held: its evaluation (Job {job}) failed {len(verdict.failed)} of "
            f"{max(cases, len(verdict.failed))} case(s): {listed}; {override_hint(agent, revision)}"
        )
        failed = [FailedCase(name=n, **({"message": m} if m else {})) for n, m in verdict.failed]
        failing = EvaluationStatus(revision=revision, job=job, cases=cases, state=EvaluationState.FAILED, failed=failed)
        return GateOutcome(True, (True, "EvaluationFailed", message), failing.to_status())
    message = (
        f"revision {revision} is held: {verdict.message}; fix spec.evaluation, or delete Job {job} to run it again"
    )
    error = EvaluationStatus(
        revision=revision, job=job, cases=cases, state=EvaluationState.ERROR, message=verdict.message
    )
    return GateOutcome(True, (True, "EvaluationError", message), error.to_status())


def invalid(revision: int, problem: str) -> GateOutcome:
    message = f"revision {revision} is held: spec.evaluation cannot start: {problem}"
    evaluation = EvaluationStatus(revision=revision, state=EvaluationState.INVALID, message=problem)
    return GateOutcome(True, (True, "EvaluationInvalid", message), evaluation.to_status())


def with_gate_status(
    status: dict[str, Any], outcome: GateOutcome, *, now: datetime, generation: int | None
) -> dict[str, Any]:
    """The agent's status with the BundleGated condition and status.evaluation of this pass."""
    new = dict(status)
    conditions = list(new.get("conditions") or [])
    if outcome.condition is None:
        new["conditions"] = [c for c in conditions if c.get("type") != CONDITION]
        if "evaluation" in new:
            new["evaluation"] = None  # a merge patch deletes it; the next pass finds it gone and writes nothing
        return new
    new["conditions"] = set_condition(conditions, CONDITION, *outcome.condition, now=now, generation=generation)
    if outcome.evaluation is not None:
        # Every field, always: the status is written as a merge patch, which would keep a field left out.
        every = EvaluationStatus.model_validate(
            {"job": "", "cases": 0, "failed": [], "message": "", **outcome.evaluation}
        )
        new["evaluation"] = every.to_status()
    return new
