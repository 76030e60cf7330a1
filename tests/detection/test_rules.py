"""Rules compile to PromQL (case tables), bad rules are reported one by one, and the metric names are the
runtime's."""

from __future__ import annotations

import pytest

from tourniquet.domain import detection
from tourniquet.domain.detection import compile_rules, parse_duration, samples_for_agent
from tourniquet.models import Severity
from tourniquet.models.agentincident import IncidentClass
from tourniquet.runtime import AgentMetrics, Guard, StaticControl

AGENT = "refund-agent"
FAILURES = 'tourniquet_agent_task_failures_total{agent="refund-agent"}'


def one(rule: dict) -> detection.CompiledRule:
    (compiled,) = compile_rules([rule], AGENT)
    return compiled


@pytest.mark.parametrize(
    ("rule", "expr"),
    [
        (
            {"template": "retryStorm"},
            f"sum by (agent, task) (({FAILURES} unless {FAILURES} offset 5m) or increase({FAILURES}[5m])) >= 3",
        ),
        (
            {"template": "retryStorm", "params": {"threshold": 5, "window": "10m", "task": "refund_request"}},
            'sum by (agent, task) ((tourniquet_agent_task_failures_total{agent="refund-agent",task="refund_request"}'
            ' unless tourniquet_agent_task_failures_total{agent="refund-agent",task="refund_request"} offset 10m)'
            ' or increase(tourniquet_agent_task_failures_total{agent="refund-agent",task="refund_request"}[10m]))'
            " >= 5",
        ),
        (
            {"template": "loop"},
            'sum by (agent, tool) ((tourniquet_agent_repeated_tool_calls_total{agent="refund-agent"} unless '
            'tourniquet_agent_repeated_tool_calls_total{agent="refund-agent"} offset 5m) or '
            'increase(tourniquet_agent_repeated_tool_calls_total{agent="refund-agent"}[5m])) > 3',
        ),
        (
            {"template": "tokenSurge"},
            'sum by (agent) (rate(tourniquet_agent_tokens_total{agent="refund-agent"}[1m])) > 5 * '
            'sum by (agent) (rate(tourniquet_agent_tokens_total{agent="refund-agent"}[10m] offset 1m)) and '
            'sum by (agent) (rate(tourniquet_agent_tokens_total{agent="refund-agent"}[10m] offset 1m)) > 0',
        ),
        (
            {"template": "budgetExceeded", "params": {"dollarsPerHour": 20}},
            'sum by (agent) (increase(tourniquet_agent_cost_dollars_total{agent="refund-agent"}[1h])) > 20',
        ),
        (
            {"template": "budgetExceeded", "params": {"dollarsPerSession": "0.5", "window": "30m"}},
            'sum by (agent) (increase(tourniquet_agent_cost_dollars_total{agent="refund-agent"}[30m])) / '
            'sum by (agent) (increase(tourniquet_agent_sessions_total{agent="refund-agent"}[30m])) > 0.5 and '
            'sum by (agent) (increase(tourniquet_agent_sessions_total{agent="refund-agent"}[30m])) > 0',
        ),
        (
            {"template": "policyDenial", "params": {"tool": "issue_refund"}},
            'sum by (agent, tool) ((tourniquet_agent_policy_denials_total{agent="refund-agent",tool="issue_refund"}'
            ' unless tourniquet_agent_policy_denials_total{agent="refund-agent",tool="issue_refund"} offset 5m) or'
            ' increase(tourniquet_agent_policy_denials_total{agent="refund-agent",tool="issue_refund"}[5m])) > 0',
        ),
        (
            {"template": "contextGrowth", "params": {"maxTokens": 120000}},
            '(max by (agent) (tourniquet_agent_context_tokens{agent="refund-agent"}) > 4 * '
            'max by (agent) (tourniquet_agent_context_tokens{agent="refund-agent"} offset 10m) and '
            'max by (agent) (tourniquet_agent_context_tokens{agent="refund-agent"} offset 10m) > 0 and '
            'max by (agent) (tourniquet_agent_context_tokens{agent="refund-agent"}) >= 8000) or '
            'max by (agent) (tourniquet_agent_context_tokens{agent="refund-agent"}) > 120000',
        ),
        ({"expr": 'up{job="$agent"} == 0 or $agents_total > 1'}, 'up{job="refund-agent"} == 0 or $agents_total > 1'),
    ],
)
def test_rules_compile_to_the_promql_status_shows(rule: dict, expr: str):
    compiled = one({"name": "r", **rule})
    assert compiled.error is None
    assert compiled.expr == expr


@pytest.mark.parametrize(
    ("rule", "severity", "incident_class"),
    [
        ({"template": "retryStorm"}, Severity.SEV2, IncidentClass.TOOL_MISUSE),
        ({"template": "policyDenial"}, Severity.SEV1, IncidentClass.POLICY_BYPASS),  # any unauthorized call
        ({"template": "tokenSurge"}, Severity.SEV2, IncidentClass.COST_RUNAWAY),
        ({"template": "contextGrowth"}, Severity.SEV3, IncidentClass.CONTEXT_DRIFT),
        ({"template": "policyDenial", "severity": "SEV2", "class": "other"}, Severity.SEV2, IncidentClass.OTHER),
        ({"expr": "up == 0"}, Severity.SEV2, IncidentClass.OTHER),
        ({"expr": "up == 0", "severity": "SEV3", "class": "cascade"}, Severity.SEV3, IncidentClass.CASCADE),
    ],
)
def test_templates_bring_their_severity_and_class_unless_the_rule_says_otherwise(rule, severity, incident_class):
    compiled = one({"name": "r", **rule})
    assert (compiled.severity, compiled.incident_class) == (severity, incident_class)


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        (
            {"template": "loop", "params": {"maxRepeat": 3}},
            "unknown parameter 'maxRepeat' for template loop (known: maxRepeats, window, tool)",
        ),
        ({"template": "retryStorm", "params": {"threshold": 0}}, "threshold must be a whole number >= 1, not 0"),
        ({"template": "retryStorm", "params": {"threshold": "many"}}, "must be a whole number >= 1, not 'many'"),
        ({"template": "retryStorm", "params": {"threshold": True}}, "must be a whole number >= 1, not True"),
        ({"template": "retryStorm", "params": {"window": "5 min"}}, "parameter window: '5 min' is not a duration"),
        ({"template": "retryStorm", "params": {"window": "0s"}}, "parameter window must be longer than 0s"),
        ({"template": "tokenSurge", "params": {"factor": 1}}, "parameter factor must be a number > 1, not 1"),
        ({"template": "tokenSurge", "params": {"factor": "inf"}}, "parameter factor must be a number > 1, not 'inf'"),
        ({"template": "budgetExceeded"}, "template budgetExceeded needs dollarsPerHour, dollarsPerSession or both"),
        ({"template": "budgetExceeded", "params": {"dollarsPerHour": -2}}, "dollarsPerHour must be a number > 0"),
        ({"template": "policyDenial", "params": {"tool": ""}}, "parameter tool must be a non-empty string"),
        ({"template": "retryStorm", "class": "meltdown"}, "class 'meltdown' is not one of intent-misclassification"),
        ({"expr": "up == 0", "params": {"x": 1}}, "params apply to templates only"),
        ({"expr": "up", "template": "loop"}, "spec.detection.rules[0]: set exactly one of expr or template"),
        ({"template": "retryStorm", "for": "soon"}, "spec.detection.rules[0].for: String should match pattern"),
        ({"template": "nonsense"}, "spec.detection.rules[0].template: Input should be 'retryStorm'"),
    ],
)
def test_a_bad_rule_is_invalid_with_a_message_that_names_the_problem(rule: dict, error: str):
    compiled = one({"name": "r", **rule})
    assert not compiled.valid
    assert error in (compiled.error or ""), compiled.error


def test_every_problem_of_a_rule_is_reported_at_once():
    compiled = one({"name": "r", "template": "retryStorm", "params": {"threshold": -1, "windw": "5m"}})
    assert "unknown parameter 'windw'" in (compiled.error or "")
    assert "parameter threshold must be a whole number >= 1" in (compiled.error or "")


def test_one_bad_rule_leaves_the_others_compiled():
    rules = compile_rules(
        [
            {"name": "storm", "template": "retryStorm"},
            {"name": "typo", "template": "loop", "params": {"maxRepeat": 3}},
            {"name": "storm", "template": "policyDenial"},
            {"template": "loop"},
            {"name": "raw", "expr": "up == 0", "for": "1m30s"},
        ],
        AGENT,
    )
    assert [(r.name, r.valid) for r in rules] == [
        ("storm", True),
        ("typo", False),
        ("storm-2", False),
        ("rules-3", False),
        ("raw", True),
    ]
    assert "rule name 'storm' is already used by rules[0]" in (rules[2].error or "")
    assert "spec.detection.rules[3].name: Field required" in (rules[3].error or "")
    assert rules[4].for_seconds == 90


def test_label_values_are_escaped():
    compiled = one({"name": "r", "template": "retryStorm", "params": {"task": 'say "hi"\\now'}})
    assert 'task="say \\"hi\\"\\\\now"' in (compiled.expr or "")


@pytest.mark.parametrize(
    ("text", "seconds"), [("15s", 15), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("1d", 86400), ("2w", 1209600)]
)
def test_durations(text: str, seconds: float):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5 m", "m5", "1.5h", "-5m", "5M"])
def test_bad_durations(text: str):
    with pytest.raises(ValueError, match="is not a duration such as 30s, 5m or 1h30m"):
        parse_duration(text)


def test_the_rules_read_the_metrics_the_runtime_exposes():
    metrics = AgentMetrics(AGENT)
    guard = Guard(StaticControl(), None, metrics, agent=AGENT, tools={"issue_refund": "write"})
    guard.deny("issue_refund", "policy")
    guard.call("issue_refund", {"id": 1}, lambda id: id)
    guard.call("issue_refund", {"id": 1}, lambda id: id)
    with pytest.raises(RuntimeError), guard.task("refund_request"):
        raise RuntimeError("failed")
    metrics.record_usage(prompt_tokens=10, cost_dollars=0.1, context_tokens=100)
    metrics.session_started()
    exposed = {line.split("{")[0] for line in metrics.exposition().splitlines() if not line.startswith("#")}
    names = {
        detection.TOOL_CALLS,
        detection.TASK_FAILURES,
        detection.TOKENS,
        detection.COST,
        detection.POLICY_DENIALS,
        detection.CONTEXT_TOKENS,
        detection.REPEATED_CALLS,
        detection.SESSIONS,
    }
    assert names <= exposed, names - exposed
    for line in metrics.exposition().splitlines():
        if line.split("{")[0] in names:
            assert f'agent="{AGENT}"' in line  # every template selects on this label


@pytest.mark.parametrize(
    ("result", "values"),
    [
        ([], []),
        ([{"metric": {"agent": AGENT, "task": "t"}, "value": [1, "3"]}], [3.0]),
        ([{"metric": {"agent": "other-agent"}, "value": [1, "3"]}], []),  # someone else's series
        ([{"metric": {"job": "x"}, "value": [1, "0"]}], [0.0]),  # no agent label: it is this agent's rule
    ],
)
def test_samples_belong_to_the_agent(result: list, values: list[float]):
    assert [s.value for s in samples_for_agent(result, AGENT)] == values


@pytest.mark.parametrize(
    ("result", "words"),
    [
        ([1700000000.0, "2"], "returns a scalar"),
        ([{"metric": {}, "values": [[1, "2"]]}], "returned a range vector"),
        ("text", "returned str"),
    ],
)
def test_a_rule_must_return_an_instant_vector(result, words: str):
    with pytest.raises(detection.ResultShapeError, match=words):
        samples_for_agent(result, AGENT)
