"""One agent's detection pass against the realistic API server, with Prometheus's answers scripted."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import AD, AI, Cluster, example
from tourniquet.adapters.prometheus import PrometheusUnavailable, QueryRejected
from tourniquet.domain.detection import fingerprint
from tourniquet.reconcilers import detection as reconciler
from tourniquet.reconcilers import signals
from tourniquet.reconcilers.detection import AgentDetector

T0 = datetime(2026, 11, 21, 3, 2, tzinfo=UTC)
STORM = {"metric": {"agent": "refund-agent", "task": "refund_request"}, "value": [0, "3"]}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class ScriptedPrometheus:
    """Answers by a substring of the query; `down` makes every query fail as an unreachable Prometheus would."""

    url = "http://prometheus.test:9090"

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.ranges: dict[str, Any] = {}  # range queries: by substring; else the instant answer, at `end` only
        self.down: PrometheusUnavailable | None = None
        self.queries: list[str] = []
        self.range_queries: list[tuple[str, datetime, datetime]] = []

    async def query_range(self, expr: str, start: datetime, end: datetime, step_seconds: int = 1) -> Any:
        self.range_queries.append((expr, start, end))
        if self.down is not None:
            raise self.down
        for key, answer in self.ranges.items():
            if key in expr:
                if isinstance(answer, Exception):
                    raise answer
                return answer
        return [{"metric": s["metric"], "values": [[end.timestamp(), s["value"][1]]]} for s in self.answer(expr)]

    async def query(self, expr: str, *, at: float | None = None) -> Any:
        self.queries.append(expr)
        if self.down is not None:
            raise self.down
        parts = re.findall(r'label_replace\((.*?), "tourniquet_rule", "([^"]+)", "", ""\)', expr)
        if parts:  # several rules in one query, as Prometheus would answer it
            return [
                {**sample, "metric": {**sample["metric"], "tourniquet_rule": name}}
                for part, name in parts
                for sample in self.answer(part)
            ]
        return self.answer(expr)

    def answer(self, expr: str) -> Any:
        for key, answer in self.answers.items():
            if key in expr:
                if isinstance(answer, Exception):
                    raise answer
                return answer
        return []


def agent_with_rules(cluster: Cluster, rules: list[dict[str, Any]], interval: int = 2) -> None:
    docs = copy.deepcopy(example())
    docs[1]["spec"]["detection"] = {"intervalSeconds": interval, "rules": rules}
    cluster.apply(docs)


def incidents(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.list(AI)


def detection_status(cluster: Cluster) -> dict[str, Any]:
    return cluster.status(AD, "refund-agent").get("detection") or {}


def rule_states(cluster: Cluster) -> dict[str, str]:
    return {r["name"]: r["state"] for r in detection_status(cluster).get("rules") or []}


def degraded(cluster: Cluster) -> dict[str, Any]:
    conditions = cluster.status(AD, "refund-agent").get("conditions") or []
    return next((c for c in conditions if c["type"] == "DetectionDegraded"), {})


@pytest.fixture
def prometheus() -> ScriptedPrometheus:
    return ScriptedPrometheus()


@pytest.fixture
def detector(cluster, kube, prometheus: ScriptedPrometheus) -> AgentDetector:
    return AgentDetector(kube, prometheus, cluster.namespace, "refund-agent")  # type: ignore[arg-type]


async def run(detector: AgentDetector, cluster: Cluster, seconds: float) -> reconciler.DetectionReport:
    return await detector.evaluate(cluster.get(AD, "refund-agent") or {}, now=at(seconds))


async def test_a_firing_rule_opens_one_incident_and_its_repeats_count_on_it(cluster, detector, prometheus):
    agent_with_rules(cluster, [{"name": "retry-storm", "template": "retryStorm"}])
    await run(detector, cluster, 0)
    assert incidents(cluster) == [] and rule_states(cluster) == {"retry-storm": "Inactive"}
    expr = detection_status(cluster)["rules"][0]["expr"]
    assert expr.startswith('sum by (agent, task) ((tourniquet_agent_task_failures_total{agent="refund-agent"}')

    prometheus.answers["task_failures"] = [STORM]
    report = await run(detector, cluster, 2)
    assert report.firing == ["retry-storm"]
    (incident,) = incidents(cluster)
    meta, spec, status = incident["metadata"], incident["spec"], incident["status"]
    assert meta["name"].startswith("refund-agent-retry-storm-")
    assert meta["labels"]["tourniquet.dev/fingerprint"] == fingerprint(cluster.namespace, "refund-agent", "retry-storm")
    assert spec == {
        "agents": ["refund-agent"],
        "severity": "SEV2",
        "class": "tool-misuse",
        "summary": "Rule retry-storm fired on refund-agent: 3 or more failures of one task within 5m "
        "(task=refund_request: 3)",
        "window": {"start": "2026-11-21T03:02:02Z"},
    }
    assert status["detection"]["count"] == 1 and status["detection"]["source"] == "prometheus"
    assert status["timings"] == {"detectedSeconds": 0.0}
    assert rule_states(cluster) == {"retry-storm": "Firing"}
    assert detection_status(cluster)["rules"][0]["activeAt"] == "2026-11-21T03:02:02Z"

    for second in (4, 6, 8):
        await run(detector, cluster, second)
    (incident,) = incidents(cluster)
    assert incident["status"]["detection"]["count"] == 4
    assert incident["status"]["detection"]["lastSeen"] == "2026-11-21T03:02:08.000000Z"


async def test_a_restarted_operator_counts_on_the_same_incident(cluster, kube, detector, prometheus):
    agent_with_rules(cluster, [{"name": "retry-storm", "template": "retryStorm"}])
    prometheus.answers["task_failures"] = [STORM]
    await run(detector, cluster, 0)
    (opened,) = incidents(cluster)

    restarted = AgentDetector(kube, prometheus, cluster.namespace, "refund-agent")  # type: ignore[arg-type]
    await run(restarted, cluster, 2)
    assert [i["metadata"]["name"] for i in incidents(cluster)] == [opened["metadata"]["name"]]

    # Even when the lookup by fingerprint misses it (a stale read), the same episode has the same name: 409.
    async def nothing(*_: Any) -> list[dict[str, Any]]:
        return []

    blind = AgentDetector(kube, prometheus, cluster.namespace, "refund-agent")  # type: ignore[arg-type]
    original = signals._by_fingerprint
    signals._by_fingerprint = nothing  # type: ignore[assignment]
    try:
        report = await run(blind, cluster, 4)
    finally:
        signals._by_fingerprint = original  # type: ignore[assignment]
    assert report.rules[0].outcome is not None and report.rules[0].outcome.outcome == "updated"
    (incident,) = incidents(cluster)
    assert incident["status"]["detection"]["count"] == 3


async def test_a_resolved_episode_is_not_reopened_and_a_new_episode_is(cluster, detector, prometheus):
    agent_with_rules(cluster, [{"name": "retry-storm", "template": "retryStorm"}])
    prometheus.answers["task_failures"] = [STORM]
    await run(detector, cluster, 0)
    (first,) = incidents(cluster)
    cluster.patch(AI, first["metadata"]["name"], {"spec": {"resolved": True}})

    report = await run(detector, cluster, 2)  # still the same storm: a human resolved it knowingly
    assert report.rules[0].outcome is not None and report.rules[0].outcome.outcome == "suppressed"
    assert len(incidents(cluster)) == 1

    prometheus.answers["task_failures"] = []
    await run(detector, cluster, 4)  # the storm is over
    prometheus.answers["task_failures"] = [STORM]
    await run(detector, cluster, 6)  # and a new one starts
    names = sorted(i["metadata"]["name"] for i in incidents(cluster))
    assert len(names) == 2
    (second,) = [i for i in incidents(cluster) if i["metadata"]["name"] != first["metadata"]["name"]]
    assert second["spec"]["window"]["start"] == "2026-11-21T03:02:06Z"


async def test_for_keeps_a_rule_pending_until_it_lasted(cluster, detector, prometheus):
    agent_with_rules(cluster, [{"name": "storm", "template": "retryStorm", "for": "10s"}])
    prometheus.answers["task_failures"] = [STORM]
    await run(detector, cluster, 0)
    assert rule_states(cluster) == {"storm": "Pending"} and incidents(cluster) == []
    await run(detector, cluster, 8)
    assert rule_states(cluster) == {"storm": "Pending"} and incidents(cluster) == []
    await run(detector, cluster, 10)
    assert rule_states(cluster) == {"storm": "Firing"}
    (incident,) = incidents(cluster)
    assert incident["spec"]["window"]["start"] == "2026-11-21T03:02:00Z"  # when the signal began
    assert incident["status"]["timings"]["detectedSeconds"] == 10.0


def run_of(first: float, last: float) -> list[dict[str, Any]]:
    """A range query's answer: the storm's series with a sample at every second from `first` to `last`."""
    seconds = range(int(first), int(last) + 1)
    return [{"metric": STORM["metric"], "values": [[at(t).timestamp(), "3"] for t in seconds]}]


async def test_an_episode_starts_at_the_threshold_crossing_prometheus_shows(cluster, detector, prometheus):
    agent_with_rules(cluster, [{"name": "storm", "template": "retryStorm"}])
    await run(detector, cluster, 0)  # seen inactive at T0
    # Samples since T0+4 (and at T0+1, a blip before): the operator looks at T0+12.
    prometheus.answers["task_failures"] = [STORM]
    prometheus.ranges["task_failures"] = [
        {"metric": STORM["metric"], "values": [[at(1).timestamp(), "3"]] + run_of(4, 12)[0]["values"]}
    ]
    await run(detector, cluster, 12.4)
    (expr, start, end) = prometheus.range_queries[-1]
    assert "task_failures" in expr and (start, end) == (at(0), at(12))  # since it was last seen inactive

    (incident,) = incidents(cluster)
    status = incident["status"]
    assert detection_status(cluster)["rules"][0]["activeAt"] == "2026-11-21T03:02:04Z"
    assert incident["spec"]["window"]["start"] == "2026-11-21T03:02:04Z"
    assert status["timings"]["detectedSeconds"] == 8.4
    assert status["timeline"][0] == {
        "time": "2026-11-21T03:02:04.000000Z",
        "event": "Detected",
        "message": "rule storm crossed its threshold (its first samples in Prometheus's data)",
        "agent": "refund-agent",
    }
    # A continuing episode asks nothing more.
    await run(detector, cluster, 14)
    assert len(prometheus.range_queries) == 1


async def test_an_episode_whose_start_prometheus_cannot_show_is_not_timed(cluster, detector, prometheus):
    agent_with_rules(cluster, [{"name": "storm", "template": "retryStorm"}])
    prometheus.answers["task_failures"] = [STORM]
    prometheus.ranges["task_failures"] = QueryRejected(422, "execution", "query processing would load too many samples")
    await run(detector, cluster, 3)  # no earlier evaluation: the last 5 minutes are searched
    (_, start, end) = prometheus.range_queries[-1]
    assert (start, end) == (at(3 - 300), at(3))
    (incident,) = incidents(cluster)
    assert incident["spec"]["window"]["start"] == "2026-11-21T03:02:03Z"  # when the operator saw it
    assert "detectedSeconds" not in (incident["status"].get("timings") or {})  # not measured, not reported
    assert incident["status"]["timeline"][0]["message"] == (
        "rule storm returned samples when the operator first evaluated it (Prometheus's data did not show when "
        "they began)"
    )


async def test_no_episode_starts_while_prometheus_cannot_say_when(cluster, detector, prometheus):
    agent_with_rules(cluster, [{"name": "storm", "template": "retryStorm"}])
    await run(detector, cluster, 0)
    prometheus.answers["task_failures"] = [STORM]
    prometheus.ranges["task_failures"] = PrometheusUnavailable("PrometheusTimeout", "Prometheus did not answer")
    await run(detector, cluster, 2)
    assert incidents(cluster) == [] and rule_states(cluster) == {"storm": "Inactive"}
    assert (degraded(cluster)["status"], degraded(cluster)["reason"]) == ("True", "PrometheusTimeout")
    del prometheus.ranges["task_failures"]
    await run(detector, cluster, 4)
    assert rule_states(cluster) == {"storm": "Firing"} and len(incidents(cluster)) == 1


async def test_a_firing_rule_that_clears_is_recorded_and_the_incident_stays_open(cluster, detector, prometheus):
    agent_with_rules(cluster, [{"name": "storm", "template": "retryStorm"}])
    prometheus.answers["task_failures"] = [STORM]
    await run(detector, cluster, 0)
    prometheus.answers["task_failures"] = []
    await run(detector, cluster, 2)
    (incident,) = incidents(cluster)
    assert incident["status"]["detection"]["clearedAt"] == "2026-11-21T03:02:02.000000Z"
    assert not incident["spec"].get("resolved")
    assert rule_states(cluster) == {"storm": "Inactive"}


async def test_an_unreachable_prometheus_degrades_detection_and_opens_nothing(cluster, detector, prometheus):
    agent_with_rules(cluster, [{"name": "storm", "template": "retryStorm"}])
    await run(detector, cluster, 0)
    assert degraded(cluster)["status"] == "False"
    assert degraded(cluster)["message"] == "1 rule(s) evaluated against Prometheus at http://prometheus.test:9090"

    prometheus.down = PrometheusUnavailable(
        "PrometheusUnreachable", "Prometheus at http://prometheus.test:9090 is unreachable: Connection refused"
    )
    prometheus.answers["task_failures"] = [STORM]  # what it would say: but it says nothing
    for second in (2, 4, 6):
        await run(detector, cluster, second)
    assert incidents(cluster) == []
    down = degraded(cluster)
    assert (down["status"], down["reason"]) == ("True", "PrometheusUnreachable")
    assert down["message"] == "Prometheus at http://prometheus.test:9090 is unreachable: Connection refused"
    assert down["lastTransitionTime"] == "2026-11-21T03:02:02Z"  # kept while it stays down
    assert rule_states(cluster) == {"storm": "Inactive"}  # no verdict, no change

    prometheus.down = None
    prometheus.answers["task_failures"] = []
    await run(detector, cluster, 8)
    up = degraded(cluster)
    assert (up["status"], up["reason"], up["lastTransitionTime"]) == ("False", "Evaluating", "2026-11-21T03:02:08Z")


async def test_a_malformed_rule_is_reported_and_the_others_keep_working(cluster, detector, prometheus):
    agent_with_rules(
        cluster,
        [
            {"name": "bad-promql", "expr": "sum(rate(x[5m]"},
            {"name": "bad-param", "template": "loop", "params": {"maxRepeat": 3}},
            {"name": "storm", "template": "retryStorm"},
        ],
    )
    prometheus.answers["sum(rate(x[5m]"] = QueryRejected(
        400, "bad_data", 'invalid parameter "query": 1:15: parse error: unclosed left parenthesis'
    )
    prometheus.answers["task_failures"] = [STORM]
    await run(detector, cluster, 0)
    rules = {r["name"]: r for r in detection_status(cluster)["rules"]}
    assert rules["bad-promql"] == {
        "name": "bad-promql",
        "state": "Invalid",
        "expr": "sum(rate(x[5m]",
        "error": 'Prometheus rejected the query (400 bad_data): invalid parameter "query": 1:15: parse error: '
        "unclosed left parenthesis",
    }
    assert rules["bad-param"]["state"] == "Invalid"
    assert rules["bad-param"]["error"] == (
        "unknown parameter 'maxRepeat' for template loop (known: maxRepeats, window, tool)"
    )
    assert rules["storm"]["state"] == "Firing"
    assert len(incidents(cluster)) == 1
    assert degraded(cluster)["status"] == "False"  # a wrong rule is not a degraded Prometheus
    assert not any("maxRepeat" in q for q in prometheus.queries)  # an invalid template is never sent


async def test_the_agent_s_other_conditions_survive_and_the_agent_reconcile_keeps_ours(cluster, kube, detector):
    from tourniquet.reconcilers.agentdeployment import reconcile_agent

    agent_with_rules(cluster, [{"name": "storm", "template": "retryStorm"}])
    await reconcile_agent(kube, cluster.get(AD, "refund-agent") or {}, [])
    before = {c["type"] for c in cluster.status(AD, "refund-agent")["conditions"]}
    assert "Ready" in before
    await run(detector, cluster, 0)
    after = {c["type"] for c in cluster.status(AD, "refund-agent")["conditions"]}
    assert after == before | {"DetectionDegraded"}
    await reconcile_agent(kube, cluster.get(AD, "refund-agent") or {}, [])
    assert degraded(cluster)["status"] == "False"
    assert detection_status(cluster)["rules"][0]["name"] == "storm"


async def test_detection_off_is_said_on_the_agent(cluster, kube):
    agent_with_rules(cluster, [{"name": "storm", "template": "retryStorm"}])
    off = AgentDetector(kube, None, cluster.namespace, "refund-agent")
    await off.evaluate(cluster.get(AD, "refund-agent") or {}, now=T0)
    condition = degraded(cluster)
    assert (condition["status"], condition["reason"]) == ("True", "DetectionOff")
    assert condition["message"] == "detection is off: TOURNIQUET_PROMETHEUS_URL is not set on the operator"
    assert detection_status(cluster)["rules"][0]["expr"]  # still shown, ready for Grafana


async def test_removing_the_rules_removes_the_detection_status(cluster, detector):
    agent_with_rules(cluster, [{"name": "storm", "template": "retryStorm"}])
    await run(detector, cluster, 0)
    assert detection_status(cluster) and degraded(cluster)
    cluster.patch(AD, "refund-agent", {"spec": {"detection": None}})
    report = await run(detector, cluster, 2)
    assert report.status_written
    assert "detection" not in cluster.status(AD, "refund-agent") and degraded(cluster) == {}
    assert (await run(detector, cluster, 4)).status_written is False  # converged: no more writes


async def test_a_converged_pass_writes_nothing(cluster, detector):
    agent_with_rules(cluster, [{"name": "storm", "template": "retryStorm"}])
    await run(detector, cluster, 0)
    mark = cluster.mark()
    report = await run(detector, cluster, 2)
    assert not report.status_written
    assert cluster.writes(since=mark) == []


async def test_an_agent_s_rules_go_to_prometheus_as_one_query(cluster, detector, prometheus):
    agent_with_rules(
        cluster,
        [
            {"name": "storm", "template": "retryStorm"},
            {"name": "unauthorized", "template": "policyDenial"},
            {"name": "broken", "expr": "sum(rate(x[5m]"},
        ],
    )
    prometheus.answers["sum(rate(x[5m]"] = QueryRejected(400, "bad_data", "1:15: parse error: unclosed left paren")
    denial = {"metric": {"agent": "refund-agent", "tool": "issue_refund"}, "value": [0, "1"]}
    prometheus.answers["policy_denials"] = [denial]
    await run(detector, cluster, 0)
    # Refused together: each rule asked alone once, and the refused one stays alone.
    assert len(prometheus.queries) == 4
    assert rule_states(cluster) == {"storm": "Inactive", "unauthorized": "Firing", "broken": "Invalid"}
    prometheus.queries.clear()
    await run(detector, cluster, 2)
    assert len(prometheus.queries) == 2  # the two good rules together, the refused one alone
    assert "label_replace" in prometheus.queries[0] and prometheus.queries[1] == "sum(rate(x[5m]"
    assert rule_states(cluster) == {"storm": "Inactive", "unauthorized": "Firing", "broken": "Invalid"}
    (incident,) = incidents(cluster)
    assert incident["spec"]["severity"] == "SEV1"
    assert incident["spec"]["summary"].endswith("(tool=issue_refund: 1)")  # the rule label is not shown


@pytest.mark.emulator  # fault injection
async def test_an_api_error_on_one_rule_s_incident_holds_up_nothing_and_is_retried(cluster, detector, prometheus):
    agent_with_rules(
        cluster,
        [{"name": "storm", "template": "retryStorm"}, {"name": "unauthorized", "template": "policyDenial"}],
    )
    prometheus.answers["task_failures"] = [STORM]
    cluster.fault("create", AI, status=500, count=1)  # the storm's incident cannot be created, this once
    report = await run(detector, cluster, 0)
    assert incidents(cluster) == [] and report.firing == ["storm"]
    assert rule_states(cluster) == {"storm": "Firing", "unauthorized": "Inactive"}  # the status is written all the same
    await run(detector, cluster, 2)
    (incident,) = incidents(cluster)
    assert incident["spec"]["window"]["start"] == "2026-11-21T03:02:00Z"  # the episode began at the first pass
