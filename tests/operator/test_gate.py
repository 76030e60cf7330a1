"""The redeploy gate on the real operator: a new bundle revision rolls out only once its evaluation Job passed.

Neither backend runs Jobs: the tests play the Job controller and the kubelet (tests/operator/evaljobs.py),
reporting what an eval command would.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.conftest import AD, CM, Cluster, example, wait_for
from tests.operator.evaljobs import JOBS, evaluation_jobs, finish_job, report, wait_job
from tests.operator.test_agentdeployment import active_revision, wired_revision

EVALUATION = {
    "jobTemplate": {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "eval",
                            "image": "ghcr.io/example/refund-agent:1.4.2",
                            "command": ["python", "-m", "refund_agent.eval"],
                        }
                    ]
                }
            }
        }
    }
}


def agent(prompt: str | None = None, evaluation: dict[str, Any] | None = None, **spec: Any) -> list[dict[str, Any]]:
    docs = example()
    body = docs[1]
    body["spec"]["promotion"] = {"soakSeconds": 0}  # a revision that runs becomes known good at once
    if prompt is not None:
        body["spec"]["bundle"]["prompt"]["template"] = prompt
    if evaluation is not None:
        body["spec"]["evaluation"] = copy.deepcopy(evaluation)
    body["spec"].update(spec)
    return docs


def gated(cluster: Cluster) -> dict[str, Any]:
    conditions = cluster.status(AD, "refund-agent").get("conditions") or []
    return next((c for c in conditions if c["type"] == "BundleGated"), {})


def gated_reason(cluster: Cluster, reason: str) -> dict[str, Any] | None:
    found = gated(cluster)
    return found if found.get("reason") == reason else None


def verdict(cluster: Cluster, revision: int) -> str | None:
    cm = cluster.get(CM, f"refund-agent-bundle-{revision}") or {}
    return (cm.get("metadata", {}).get("labels") or {}).get("tourniquet.dev/verdict")


def start(cluster: Cluster) -> None:
    """Revision 1 runs and is known good before the gate is configured."""
    cluster.apply(agent())
    wait_for(
        lambda: wired_revision(cluster) == "1" and verdict(cluster, 1) == "good",
        timeout=30,
        what="revision 1 known good",
    )


def test_a_new_revision_is_held_until_its_evaluation_passes_and_a_rollback_never_is(
    cluster: Cluster, operator, oncall_kubeconfig: str
) -> None:
    from click.testing import CliRunner

    from tourniquet.cli import main as cli

    start(cluster)
    cluster.apply(agent("You are the refund assistant, v2.", EVALUATION))
    job = wait_job(cluster, 2)
    running = wait_for(lambda: gated_reason(cluster, "EvaluationRunning"), timeout=30, what="revision 2 held")
    assert running["status"] == "True" and job["metadata"]["name"] in running["message"]
    assert cluster.status(AD, "refund-agent")["bundle"]["specRevision"] == 2
    assert wired_revision(cluster) == "1" and active_revision(cluster) == 1, "the consumers run revision 1 meanwhile"

    # The Job: the agent's template with the candidate bundle and the cases mounted, owned by that revision.
    name = job["metadata"]["name"]
    assert name.startswith("refund-agent-eval-2-")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tourniquet-bundle"]["configMap"]["name"] == "refund-agent-bundle-2"
    assert cluster.get(CM, volumes["tourniquet-cases"]["configMap"]["name"])["data"]["cases.yaml"] == "[]\n"
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["TOURNIQUET_BUNDLE"] == "/etc/tourniquet/bundle/bundle.json"
    assert env["TOURNIQUET_EVAL_CASES"] == "/etc/tourniquet/cases/cases.yaml"
    assert job["spec"]["podFailurePolicy"]["rules"][0]["action"] == "FailJob"
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("ConfigMap", "refund-agent-bundle-2")

    # It fails a case: held, and the condition names the case.
    finish_job(cluster, name, message=report(failed={"dup-refunds": "refunded order 123 twice"}), exit_code=1)
    failed = wait_for(lambda: gated_reason(cluster, "EvaluationFailed"), timeout=30, what="revision 2 failed")
    assert "dup-refunds (refunded order 123 twice)" in failed["message"] and failed["status"] == "True"
    evaluation = cluster.status(AD, "refund-agent")["evaluation"]
    assert evaluation["state"] == "Failed" and evaluation["failed"] == [
        {"name": "dup-refunds", "message": "refunded order 123 twice"}
    ]
    assert wired_revision(cluster) == "1" and verdict(cluster, 2) is None

    # A fixed bundle is a new revision, evaluated anew; it passes and rolls out.
    cluster.apply(agent("You are the refund assistant, v3.", EVALUATION))
    fixed = wait_job(cluster, 3)
    finish_job(cluster, fixed["metadata"]["name"], message=report(), exit_code=0)
    wait_for(lambda: wired_revision(cluster) == "3", timeout=30, what="revision 3 rolled out")
    passed = wait_for(lambda: gated_reason(cluster, "EvaluationPassed"), timeout=30, what="revision 3 passed")
    assert passed["status"] == "False"
    labels = cluster.get(CM, "refund-agent-bundle-3")["metadata"]["labels"]
    assert labels["tourniquet.dev/evaluation"] == "passed"

    # A rollback to a known-good revision is never held: no Job for revision 1.
    result = CliRunner().invoke(cli, ["rollback", "refund-agent", "--to", "1", "--kubeconfig", oncall_kubeconfig])
    assert result.exit_code == 0, result.output
    assert wired_revision(cluster) == "1"
    # Rolling forward to revision 3, which passed: not evaluated again.
    result = CliRunner().invoke(cli, ["rollback", "refund-agent", "--clear", "--kubeconfig", oncall_kubeconfig])
    assert result.exit_code == 0, result.output
    wait_for(lambda: wired_revision(cluster) == "3", timeout=30, what="revision 3 again")
    revisions = sorted(j["metadata"]["labels"]["tourniquet.dev/revision"] for j in evaluation_jobs(cluster))
    assert revisions == ["2", "3"]


def test_a_killed_evaluation_job_is_run_again(cluster: Cluster, operator) -> None:
    start(cluster)
    cluster.apply(agent("You are the refund assistant, v2.", EVALUATION))
    first = wait_job(cluster, 2)
    cluster.delete(JOBS, first["metadata"]["name"])
    again = wait_for(
        lambda: next(
            (j for j in evaluation_jobs(cluster) if j["metadata"]["uid"] != first["metadata"]["uid"]),
            None,
        ),
        timeout=30,
        what="the Job created again",
    )
    assert again["metadata"]["name"] == first["metadata"]["name"]  # deterministic per revision
    assert wired_revision(cluster) == "1"
    finish_job(cluster, again["metadata"]["name"], message=report(), exit_code=0)
    wait_for(lambda: wired_revision(cluster) == "2", timeout=30, what="revision 2 rolled out")


def test_a_job_that_fails_without_a_report_is_an_error_not_a_pass(cluster: Cluster, operator) -> None:
    start(cluster)
    cluster.apply(agent("You are the refund assistant, v2.", EVALUATION))
    job = wait_job(cluster, 2)
    finish_job(cluster, job["metadata"]["name"], message=None, exit_code=2)
    error = wait_for(lambda: gated_reason(cluster, "EvaluationError"), timeout=30, what="an evaluation error")
    assert "failed without reporting results (BackoffLimitExceeded" in error["message"]
    assert f"delete Job {job['metadata']['name']} to run it again" in error["message"]
    assert wired_revision(cluster) == "1"


def test_an_evaluation_template_that_cannot_start_holds_the_revision_and_says_why(cluster: Cluster, operator) -> None:
    start(cluster)
    broken = copy.deepcopy(EVALUATION)
    del broken["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"]
    cluster.apply(agent("You are the refund assistant, v2.", broken))
    invalid = wait_for(lambda: gated_reason(cluster, "EvaluationInvalid"), timeout=30, what="the template refused")
    assert "spec.evaluation.jobTemplate.spec.template.spec.containers[0].image is required" in invalid["message"]
    assert evaluation_jobs(cluster) == [] and wired_revision(cluster) == "1"
    # Containment and the rest of the agent are unaffected.
    ready = next(c for c in cluster.status(AD, "refund-agent")["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"


@pytest.mark.parametrize("reason", ["", "   "])
def test_an_override_without_a_reason_is_refused_by_the_api_server(cluster: Cluster, reason: str) -> None:
    from kubemu import ApiError

    docs = agent(evaluation={**EVALUATION, "override": {"revision": 2, "reason": reason}})
    with pytest.raises(ApiError) as refused:
        cluster.apply(docs)
    assert refused.value.code == 422
    assert "an evaluation override needs a reason" in str(refused.value) or "at least 1 chars" in str(refused.value)


def test_an_override_rolls_a_held_revision_out_and_is_recorded_with_who_and_why(
    cluster: Cluster, operator, oncall_kubeconfig: str
) -> None:
    import json

    from click.testing import CliRunner

    from tourniquet.cli import main as cli

    start(cluster)
    cluster.apply(agent("You are the refund assistant, v2.", EVALUATION))
    job = wait_job(cluster, 2)
    finish_job(cluster, job["metadata"]["name"], message=report(failed={"dup-refunds": "twice"}), exit_code=1)
    wait_for(lambda: gated_reason(cluster, "EvaluationFailed"), timeout=30, what="revision 2 held")

    def override(*args: str) -> Any:
        return CliRunner().invoke(
            cli, ["gate", "override", "refund-agent", *args, "--kubeconfig", oncall_kubeconfig, "-n", cluster.namespace]
        )

    refused = override("--revision", "2")
    assert refused.exit_code == 2 and "Missing option '--reason'" in refused.output
    refused = override("--revision", "2", "--reason", "  ")
    assert refused.exit_code == 1 and "--reason is empty" in refused.output
    refused = override("--revision", "9", "--reason", "outage")
    assert refused.exit_code == 1 and "has no bundle revision 9 (kept: 1, 2)" in refused.output
    assert wired_revision(cluster) == "1", "nothing rolled out by accident"

    done = override("--revision", "2", "--reason", "the eval cluster is down; the fix is reviewed")
    assert done.exit_code == 0, done.output
    assert wired_revision(cluster) == "2"
    condition = wait_for(
        lambda: gated_reason(cluster, "EvaluationOverridden"), timeout=30, what="recorded as overridden"
    )
    assert "the eval cluster is down" in condition["message"]
    meta = cluster.get(CM, "refund-agent-bundle-2")["metadata"]
    assert meta["labels"]["tourniquet.dev/evaluation"] == "overridden"
    recorded = json.loads(meta["annotations"]["tourniquet.dev/evaluation"])
    assert recorded["reason"] == "the eval cluster is down; the fix is reviewed" and recorded["at"]
    # Who: the user the API server authenticated (alice, on the real control plane; the emulator knows nobody).
    nobody = "not recorded (set spec.evaluation.override.by)"
    assert recorded["by"] == ("alice" if cluster.backend == "real" else nobody)
