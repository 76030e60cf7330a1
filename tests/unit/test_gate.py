"""The redeploy gate's decisions (pure): what is held, the Job, and the verdict read from its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tourniquet.domain import gate
from tourniquet.domain.bundles import StoredRevision
from tourniquet.models import RevisionVerdict
from tourniquet.models.review import Evaluation
from tourniquet.runtime.evaluation import Results

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = {"spec": {"template": {"spec": {"containers": [{"name": "eval", "image": "example/eval:1"}]}}}}
EVALUATION = Evaluation.model_validate({"jobTemplate": TEMPLATE})


def rev(n: int, verdict: RevisionVerdict = RevisionVerdict.UNKNOWN, evaluation: str | None = None) -> StoredRevision:
    return StoredRevision(n, f"sha{n}", f"a-bundle-{n}", None, verdict, evaluation)


STORED = [rev(1, RevisionVerdict.GOOD), rev(2), rev(3, evaluation="passed"), rev(4, evaluation="overridden")]


@pytest.mark.parametrize(
    ("evaluation", "candidate", "current", "incident_rollback", "kind", "reason"),
    [
        (None, 2, 1, False, "off", ""),
        (EVALUATION, 2, 1, False, "evaluate", ""),
        (EVALUATION, 2, None, False, "evaluate", ""),  # the first revision too
        (EVALUATION, 1, 2, False, "exempt", "KnownGood"),  # a rollback to a known-good revision
        (EVALUATION, 2, 1, True, "exempt", "RolledBack"),  # an incident's rollback is containment
        (EVALUATION, 3, 1, False, "exempt", "EvaluationPassed"),  # passed before: not evaluated again
        (EVALUATION, 4, 1, False, "exempt", "EvaluationOverridden"),
        (EVALUATION, 2, 2, False, "settled", "NotGated"),
        (EVALUATION, 3, 3, False, "settled", "EvaluationPassed"),
        (EVALUATION, None, None, False, "settled", "NoRevision"),
    ],
)
def test_plan_gate(evaluation, candidate, current, incident_rollback, kind, reason) -> None:
    step = gate.plan_gate(evaluation, candidate, current, STORED, incident_rollback=incident_rollback)
    assert (step.kind, step.reason) == (kind, reason)


def test_an_override_applies_to_the_revision_it_names_only() -> None:
    overridden = Evaluation.model_validate({"jobTemplate": TEMPLATE, "override": {"revision": 2, "reason": "outage"}})
    assert gate.plan_gate(overridden, 2, 1, STORED, incident_rollback=False).kind == "override"
    assert gate.plan_gate(overridden, 5, 1, [*STORED, rev(5)], incident_rollback=False).kind == "evaluate"


@pytest.mark.parametrize("reason", ["", "  "])
def test_an_override_needs_a_reason(reason: str) -> None:
    with pytest.raises(ValueError, match="needs a reason"):
        Evaluation.model_validate({"jobTemplate": TEMPLATE, "override": {"revision": 2, "reason": reason}})


def test_the_job_name_is_deterministic_and_changes_with_cases_and_template() -> None:
    name = gate.job_name("refund-agent", 2, "sha", "[]\n", TEMPLATE)
    assert name == gate.job_name("refund-agent", 2, "sha", "[]\n", TEMPLATE)
    assert name.startswith("refund-agent-eval-2-") and len(name) == len("refund-agent-eval-2-") + 8
    assert name != gate.job_name("refund-agent", 2, "sha", "- name: x\n", TEMPLATE)
    assert name != gate.job_name("refund-agent", 2, "sha", "[]\n", {"spec": {}})
    assert len(gate.job_name("a" * 200, 12345, "sha", "[]\n", TEMPLATE)) <= 63


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ({}, "jobTemplate.spec is missing"),
        ({"spec": {"template": {}}}, "jobTemplate.spec.template.spec is missing"),
        ({"spec": {"template": {"spec": {"containers": []}}}}, "containers is empty"),
        ({"spec": {"template": {"spec": {"containers": [{"name": "e"}]}}}}, "containers[0].image is required"),
    ],
)
def test_template_problems(template, problem) -> None:
    assert problem in "; ".join(gate.template_problems(template))
    assert gate.template_problems(TEMPLATE) == []


def test_the_job_mounts_the_candidate_and_the_cases_and_keeps_the_template() -> None:
    template = json.loads(json.dumps(TEMPLATE))
    container = template["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": "MODEL_KEY", "value": "x"}, {"name": "TOURNIQUET_BUNDLE", "value": "stale"}]
    template["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    template["spec"]["backoffLimit"] = 5
    bundle_cm = {"metadata": {"name": "a-bundle-2", "uid": "u-2"}}
    job = gate.build_job("ns", "a-eval-2-x", "a", 2, Evaluation.model_validate({"jobTemplate": template}), bundle_cm, 3)
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 5  # the template's own
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["MODEL_KEY"] == "x" and env["TOURNIQUET_BUNDLE"] == "/etc/tourniquet/bundle/bundle.json"
    assert [e["name"] for e in pod["containers"][0]["env"]].count("TOURNIQUET_BUNDLE") == 1
    assert {v["name"]: v["configMap"]["name"] for v in pod["volumes"]} == {
        "tourniquet-bundle": "a-bundle-2",
        "tourniquet-cases": "a-eval-2-x-cases",
    }
    assert job["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "a-bundle-2", "uid": "u-2"}
    ]
    assert job["metadata"]["labels"]["tourniquet.dev/component"] == "evaluation"
    assert job["metadata"]["annotations"]["tourniquet.dev/cases"] == "3"


def view(finished: str | None, message: str | None, reason: str = "") -> gate.JobView:
    return gate.JobView("j", finished, reason, "", gate.parse_report(message))


@pytest.mark.parametrize(
    ("finished", "message", "cases", "state", "failing"),
    [
        (None, None, ["a"], "Running", []),
        ("Complete", '{"passed": ["a", "b"], "failed": []}', ["a", "b"], "Passed", []),
        ("Complete", None, [], "Passed", []),  # no case yet: completion is the pass
        ("Complete", None, ["a"], "Error", []),  # cases but no report: never a pass
        ("Complete", '{"passed": ["a"]}', ["a", "b"], "Failed", ["b"]),  # b not reported
        ("Failed", '{"passed": ["a"], "failed": [{"name": "b", "message": "twice"}]}', ["a", "b"], "Failed", ["b"]),
        ("Failed", '{"cases": [{"name": "a", "passed": false}]}', ["a"], "Failed", ["a"]),
        ("Failed", None, ["a"], "Error", []),  # killed, deadline: no verdict
        ("Failed", '{"passed": ["a"]}', ["a"], "Error", []),  # says passed, but the Job failed
        ("Complete", "Traceback (most recent call last):\n  boom", ["a"], "Error", []),  # logs, not a report
    ],
)
def test_judge(finished, message, cases, state, failing) -> None:
    verdict = gate.judge(view(finished, message), cases)
    assert verdict.state == state
    assert [n for n, _ in verdict.failed] == failing


def test_the_report_fits_a_termination_message_and_never_loses_a_failure() -> None:
    results = Results()
    for i in range(300):
        results.record(f"case-{i:03d}", i % 50 != 0, "x" * 1000)
    text = results.text()
    assert len(text.encode()) <= 4096
    report = gate.parse_report(text)
    assert report is not None and set(report.failed) == {f"case-{i:03d}" for i in range(0, 300, 50)}
    # Passes that did not fit are missing, which the gate counts as failed: never a false pass.
    verdict = gate.judge(gate.JobView("j", "Complete", report=report), [f"case-{i:03d}" for i in range(300)])
    assert verdict.state == "Failed"


def test_the_example_eval_command_fails_the_regression_and_passes_the_fix(tmp_path: Path) -> None:
    """examples/eval/refund_eval.py, run as the Job runs it: the bundle and the cases from files, the report to
    the termination-message path, the exit code for the pod failure policy."""
    case = {
        "name": "dup-refunds-1",
        "inputs": [
            {"tool": "issue_refund", "arguments": {"order_id": "123", "amount_cents": 500}, "task": "ticket-812"},
            {"tool": "issue_refund", "arguments": {"order_id": "123", "amount_cents": 500}, "task": "ticket-812"},
        ],
        "expected": {"maxCalls": [{"tool": "issue_refund", "perArgument": "order_id", "count": 1}]},
    }
    (tmp_path / "cases.yaml").write_text(yaml.safe_dump([case]))
    schema = {"type": "object", "required": ["order_id", "amount_cents"]}
    bundle = {"tools": [{"name": "issue_refund", "schema": schema}]}

    def run(bundle: dict) -> tuple[int, gate.Report | None]:
        (tmp_path / "bundle.json").write_text(json.dumps(bundle))
        env = {
            "TOURNIQUET_BUNDLE": str(tmp_path / "bundle.json"),
            "TOURNIQUET_EVAL_CASES": str(tmp_path / "cases.yaml"),
            "TOURNIQUET_EVAL_REPORT": str(tmp_path / "report"),
            "PYTHONPATH": str(ROOT / "operator"),
        }
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples/eval/refund_eval.py")], env=env, capture_output=True, timeout=60
        )
        return done.returncode, gate.parse_report((tmp_path / "report").read_text())

    code, report = run(bundle)
    assert code == 1 and report is not None
    assert report.failed == {"dup-refunds-1": "issue_refund called 2 times for order_id=123 (at most 1)"}
    schema["required"].append("idempotency_key")  # the fix: a retried ticket repeats the same action
    code, report = run(bundle)
    assert code == 0 and report is not None and report.passed == {"dup-refunds-1"}
