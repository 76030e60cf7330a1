"""The tests play the Job controller and the kubelet for evaluation Jobs (neither runs on either backend).

`finish_job` does what they would do for a Job whose one pod ran the eval command and exited: the pod, owned
by the Job and labelled as the Job controller labels it, terminated with the report in its termination message
(as the kubelet writes it); then the Job's status as the Job controller writes it — `Complete` (after
`SuccessCriteriaMet`), or `Failed` (after `FailureTarget`, by the pod failure policy for exit code 1, else by
the backoff limit). The real API server validates those status transitions, so the sequence is the controller's.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from tests.conftest import wait_for

JOBS = "batch/v1/jobs"
PODS = "v1/pods"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def evaluation_jobs(cluster: Any, agent: str = "refund-agent") -> list[dict[str, Any]]:
    return cluster.list(JOBS, label_selector=f"tourniquet.dev/agent={agent},tourniquet.dev/component=evaluation")


def wait_job(cluster: Any, revision: int, agent: str = "refund-agent", timeout: float = 30) -> dict[str, Any]:
    """The evaluation Job of `revision`, once the operator created it."""
    return wait_for(
        lambda: next(
            (
                j
                for j in evaluation_jobs(cluster, agent)
                if j["metadata"]["labels"]["tourniquet.dev/revision"] == str(revision)
            ),
            None,
        ),
        timeout=timeout,
        what=f"the evaluation Job of revision {revision}",
    )


def report(passed: list[str] = (), failed: dict[str, str] | None = None) -> str:  # type: ignore[assignment]
    """What the eval command writes (tourniquet.runtime.evaluation.Results)."""
    from tourniquet.runtime.evaluation import Results

    results = Results()
    for name in passed:
        results.record(name, True)
    for name, message in (failed or {}).items():
        results.record(name, False, message)
    return results.text()


def finish_job(cluster: Any, job_name: str, *, message: str | None, exit_code: int) -> None:
    """The Job's one pod ran to `exit_code` with `message` as its termination message; the Job finished."""
    job = cluster.get(JOBS, job_name)
    assert job is not None, f"Job {job_name} does not exist"
    uid = job["metadata"]["uid"]
    template = job["spec"]["template"]
    pod_name = f"{job_name}-{uuid.uuid4().hex[:5]}"
    labels = {
        **(template["metadata"].get("labels") or {}),
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": job_name,
        "controller-uid": uid,
        "job-name": job_name,
    }
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": uid, "controller": True}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name, "labels": labels, "ownerReferences": [owner]},
        "spec": template["spec"],
    }
    cluster.apply([pod])
    started = _now()
    container = template["spec"]["containers"][0]
    terminated: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": "Completed" if exit_code == 0 else "Error",
        "startedAt": started,
        "finishedAt": started,
    }
    if message is not None:
        terminated["message"] = message
    cluster.patch(
        PODS,
        pod_name,
        {
            "status": {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "startTime": started,
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "started": False,
                        "state": {"terminated": terminated},
                    }
                ],
            }
        },
        subresource="status",
    )
    # The Job controller: first the Job starts, then it is judged on its pod.
    cluster.patch(JOBS, job_name, {"status": {"startTime": started, "active": 1, "ready": 0}}, subresource="status")
    if exit_code == 0:
        judged = [
            _condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
            _condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods"),
        ]
        counts = {"succeeded": 1, "completionTime": started}
    elif exit_code == 1:
        why = (
            f"Container {container['name']} for pod {pod_name} failed with exit code 1 matching FailJob rule at index 0"
        )
        judged = [_condition("FailureTarget", "PodFailurePolicy", why), _condition("Failed", "PodFailurePolicy", why)]
        counts = {"failed": 1}
    else:
        why = "Job has reached the specified backoff limit"
        judged = [
            _condition("FailureTarget", "BackoffLimitExceeded", why),
            _condition("Failed", "BackoffLimitExceeded", why),
        ]
        counts = {"failed": 1}
    cluster.patch(
        JOBS,
        job_name,
        {"status": {"active": 0, "ready": 0, "terminating": 0, **counts, "conditions": judged}},
        subresource="status",
    )


def _condition(kind: str, reason: str, message: str) -> dict[str, Any]:
    now = _now()
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    }


def cases_given(cluster: Any, job: dict[str, Any]) -> list[dict[str, Any]]:
    """The regression cases the Job was given (its mounted cases file)."""
    import yaml

    volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "tourniquet-cases")
    cm = cluster.get("v1/configmaps", volume["configMap"]["name"])
    return yaml.safe_load(cm["data"]["cases.yaml"]) or []


__all__ = ["cases_given", "evaluation_jobs", "finish_job", "report", "wait_job"]


def run_eval(
    cluster: Any, job: dict[str, Any], workdir: Any, script: str = "examples/eval/refund_eval.py"
) -> tuple[int, str]:
    """Run the eval command as the Job's pod would: the Job's mounted bundle and cases written to files, the
    report read back from the termination-message path. Returns (exit code, termination message)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import ROOT

    volumes = {v["name"]: v["configMap"]["name"] for v in job["spec"]["template"]["spec"]["volumes"]}
    bundle = cluster.get("v1/configmaps", volumes["tourniquet-bundle"])["data"]["bundle.json"]
    cases = cluster.get("v1/configmaps", volumes["tourniquet-cases"])["data"]["cases.yaml"]
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "bundle.json").write_text(bundle)
    (work / "cases.yaml").write_text(cases)
    env = {
        **os.environ,
        "TOURNIQUET_BUNDLE": str(work / "bundle.json"),
        "TOURNIQUET_EVAL_CASES": str(work / "cases.yaml"),
        "TOURNIQUET_EVAL_REPORT": str(work / "termination-log"),
        "PYTHONPATH": str(ROOT / "operator"),
    }
    done = subprocess.run([sys.executable, str(ROOT / script)], env=env, capture_output=True, text=True, timeout=60)
    return done.returncode, (work / "termination-log").read_text()
