"""Detection end to end: a real Prometheus (Debian's) scrapes agents that use the runtime library, the real
operator evaluates their rules, and the severity playbook contains them.

One Prometheus (scrape_interval 1s) and one metrics endpoint serve the whole module; every test has its
own agent name, so series never leak from one test into another.
"""

from __future__ import annotations

import copy
import json
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import AD, AI, CM, Cluster, OperatorProcess, example, operator_scope, scrape, wait_for
from tests.detection.conftest import PrometheusProcess, free_port, needs_prometheus
from tourniquet.domain.detection import TASK_FAILURES
from tourniquet.runtime import AgentMetrics, ControlFollower, Guard, Shadowed, SqliteLedger, ToolRevoked, serve_metrics

pytestmark = needs_prometheus

TOOLS = {"lookup_order": "read", "issue_refund": "write", "reverse_refund": "write"}
INTERVAL = 2
TOKEN = "receiver-token"


@pytest.fixture(scope="module")
def registry() -> Iterator[tuple[CollectorRegistry, int]]:
    shared = CollectorRegistry()
    server, _ = serve_metrics(0, registry=shared, addr="127.0.0.1")
    yield shared, server.server_port
    server.shutdown()


@pytest.fixture(scope="module")
def prometheus(prometheus_factory, registry) -> PrometheusProcess:
    process: PrometheusProcess = prometheus_factory([f"127.0.0.1:{registry[1]}"])
    process.wait_scraping()
    return process


@pytest.fixture
def detecting_operator(
    cluster: Cluster, kubeconfig: str, prometheus: PrometheusProcess, monkeypatch
) -> Iterator[OperatorProcess]:
    monkeypatch.setenv("TOURNIQUET_PROMETHEUS_URL", prometheus.url)
    monkeypatch.setenv("TOURNIQUET_PROMETHEUS_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("TOURNIQUET_HTTP_PORT", str(free_port()))
    monkeypatch.setenv("TOURNIQUET_RECEIVER_TOKEN", TOKEN)
    process = OperatorProcess(kubeconfig, scope=operator_scope(cluster)).start()
    yield process
    output = process.stop()
    if "Traceback" in output:
        print(output[-5000:])


class Agent:
    """An agent's runtime as it runs in its pod: metrics scraped by Prometheus, control followed via the API."""

    def __init__(self, name: str, namespace: str, registry: CollectorRegistry, kubeconfig: str, tmp_path: Path) -> None:
        self.name = name
        self.metrics = AgentMetrics(name, registry)
        self.follower = ControlFollower(
            name, namespace, kubeconfig=kubeconfig, mount_dir=tmp_path / "not-mounted", watch_timeout_seconds=5
        )
        self.ledger = SqliteLedger(tmp_path / f"{name}-ledger.db")
        self.guard = Guard(self.follower, self.ledger, self.metrics, agent=name, tools=TOOLS)
        self.executed: list[str] = []
        self.tasks = 0

    def start(self) -> Agent:
        self.follower.start(wait_seconds=5)
        return self

    def stop(self) -> None:
        self.follower.stop()
        self.ledger.close()

    def fail_task(self, times: int = 1) -> None:
        for _ in range(times):
            self.tasks += 1
            with pytest.raises(RuntimeError), self.guard.task("refund_request", task_id=f"ticket-{self.tasks}"):
                raise RuntimeError("payments API answered 503")

    def refund(self, order: str) -> Any:
        return self.guard.call(
            "issue_refund",
            {"order_id": order, "amount_cents": 1200},
            self._issue_refund,
            subjects=[f"order:{order}"],
            task_id=f"ticket-{order}",
        )

    def _issue_refund(self, order_id: str, amount_cents: int) -> str:
        self.executed.append(order_id)
        return f"refund for {order_id}"


@pytest.fixture
def make_agent(cluster: Cluster, registry, agent_kubeconfig: str, tmp_path: Path) -> Iterator[Any]:
    agents: list[Agent] = []

    def make(name: str) -> Agent:
        agent = Agent(name, cluster.namespace, registry[0], agent_kubeconfig, tmp_path)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.stop()


def deploy(cluster: Cluster, name: str, rules: list[dict[str, Any]]) -> None:
    worker, agent = copy.deepcopy(example())
    worker["metadata"]["name"] = f"{name}-worker"
    worker["metadata"]["labels"] = {"app": name}
    worker["spec"]["selector"]["matchLabels"] = {"app": name}
    worker["spec"]["template"]["metadata"]["labels"] = {"app": name}
    agent["metadata"]["name"] = name
    agent["spec"]["consumers"] = [{"kind": "Deployment", "name": f"{name}-worker"}]
    agent["spec"]["podSelector"] = {"matchLabels": {"app": name}}
    agent["spec"]["detection"] = {"intervalSeconds": INTERVAL, "rules": rules}
    cluster.apply([worker, agent])
    wait_for(lambda: cluster.get(CM, f"{name}-control"), what=f"{name}'s control ConfigMap")


def rules_of(cluster: Cluster, name: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in (cluster.status(AD, name).get("detection") or {}).get("rules") or []}


def degraded(cluster: Cluster, name: str) -> dict[str, Any]:
    return next((c for c in cluster.status(AD, name).get("conditions") or [] if c["type"] == "DetectionDegraded"), {})


def incidents_of(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return [i for i in cluster.list(AI) if i["spec"]["agents"] == [name]]


def control(cluster: Cluster, name: str) -> tuple[str, list[str]]:
    data = (cluster.get(CM, f"{name}-control") or {})["data"]
    return data["mode"], json.loads(data["revokedTools"])


def test_a_retry_storm_opens_one_sev2_incident_within_an_interval_and_shadows_the_agent(
    cluster: Cluster, detecting_operator: OperatorProcess, make_agent, prometheus: PrometheusProcess
):
    name = f"storm-agent-{cluster.backend}"  # Prometheus and the metrics registry outlive one backend's run
    deploy(
        cluster,
        name,
        [
            {"name": "retry-storm", "template": "retryStorm"},
            {"name": "bad-promql", "expr": 'sum(rate(tourniquet_agent_tool_calls_total{agent="$agent"}[1m]'},
            {"name": "bad-param", "template": "loop", "params": {"maxRepeat": 3}},
        ],
    )
    agent = make_agent(name).start()
    # A malformed rule is reported on the agent; the others are evaluated all the same.
    wait_for(lambda: rules_of(cluster, name).get("bad-promql", {}).get("state") == "Invalid", what="bad PromQL")
    rules = rules_of(cluster, name)
    assert "parse error" in rules["bad-promql"]["error"] and rules["bad-promql"]["error"].startswith(
        "Prometheus rejected the query (400 bad_data)"
    )
    assert rules["bad-param"]["state"] == "Invalid"
    assert rules["bad-param"]["error"] == (
        "unknown parameter 'maxRepeat' for template loop (known: maxRepeats, window, tool)"
    )
    assert rules["retry-storm"]["state"] == "Inactive"
    assert rules["retry-storm"]["expr"].startswith("sum by (agent, task) ((tourniquet_agent_task_failures_total")
    assert degraded(cluster, name)["status"] == "False"
    assert control(cluster, name) == ("active", [])

    agent.fail_task(2)
    time.sleep(INTERVAL + 1)  # two failures stay below the threshold
    assert incidents_of(cluster, name) == []
    agent.fail_task()  # the third: the threshold is crossed now
    crossed = time.monotonic()
    (incident,) = wait_for(lambda: incidents_of(cluster, name), timeout=INTERVAL + 2, interval=0.02, what="incident")
    detected = time.monotonic() - crossed
    assert detected <= INTERVAL + 2
    assert incident["spec"]["severity"] == "SEV2" and incident["spec"]["class"] == "tool-misuse"
    assert "task=refund_request: 3" in incident["spec"]["summary"]
    window = datetime.fromisoformat(incident["spec"]["window"]["start"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - window).total_seconds()) < 30
    print(f"detected {detected:.2f}s after the threshold was crossed")

    # The SEV2 playbook (shadow) applies at once; the agent sees it through the API within seconds.
    wait_for(lambda: control(cluster, name)[0] == "shadow", timeout=5, what="shadow mode set")
    agent.follower.wait_for(lambda state: state.shadow, timeout=5)
    result = agent.refund("order-77")
    assert isinstance(result, Shadowed) and agent.executed == []
    (shadowed,) = agent.ledger.actions(name, datetime(2000, 1, 1, tzinfo=UTC), outcomes=("shadowed",))
    assert shadowed.tool == "issue_refund" and shadowed.subjects == ("order:order-77",)
    assert agent.guard.call("lookup_order", {"order_id": "order-77"}, lambda order_id: "found") == "found"

    # The storm goes on, the operator restarts: the same incident counts it, no second one opens.
    agent.fail_task(3)
    wait_for(lambda: incidents_of(cluster, name)[0]["status"]["detection"]["count"] >= 3, timeout=10, what="count")
    detecting_operator.stop()
    detecting_operator.start()
    count = incidents_of(cluster, name)[0]["status"]["detection"]["count"]
    wait_for(
        lambda: incidents_of(cluster, name)[0]["status"]["detection"]["count"] > count,
        timeout=3 * INTERVAL + 5,
        what="count after restart",
    )
    assert len(incidents_of(cluster, name)) == 1
    assert rules_of(cluster, name)["bad-promql"]["state"] == "Invalid"


def test_an_unauthorized_tool_call_opens_a_sev1_and_the_tool_is_revoked(
    cluster: Cluster, detecting_operator: OperatorProcess, make_agent
):
    name = f"deny-agent-{cluster.backend}"  # Prometheus and the metrics registry outlive one backend's run
    deploy(cluster, name, [{"name": "unauthorized", "template": "policyDenial"}])
    agent = make_agent(name).start()
    wait_for(lambda: rules_of(cluster, name).get("unauthorized", {}).get("state") == "Inactive", what="rule evaluated")
    assert agent.refund("order-1") == "refund for order-1"

    agent.guard.deny("issue_refund", "refund above the agent's limit without approval")
    (incident,) = wait_for(lambda: incidents_of(cluster, name), timeout=INTERVAL + 3, what="SEV1 incident")
    assert incident["spec"]["severity"] == "SEV1" and incident["spec"]["class"] == "policy-bypass"
    wait_for(lambda: "issue_refund" in control(cluster, name)[1], timeout=5, what="issue_refund revoked")
    agent.follower.wait_for(lambda state: state.is_revoked("issue_refund"), timeout=5)
    with pytest.raises(ToolRevoked, match="tool issue_refund is revoked by incident containment"):
        agent.refund("order-2")
    assert agent.executed == ["order-1"]


def test_prometheus_down_is_degraded_detection_never_an_incident_and_it_recovers(
    cluster: Cluster, detecting_operator: OperatorProcess, make_agent, prometheus: PrometheusProcess
):
    name = f"flaky-agent-{cluster.backend}"  # Prometheus and the metrics registry outlive one backend's run
    deploy(cluster, name, [{"name": "retry-storm", "template": "retryStorm"}])
    make_agent(name).start()
    wait_for(lambda: degraded(cluster, name).get("status") == "False", what="evaluating")

    prometheus.stop()
    try:
        down = wait_for(
            lambda: degraded(cluster, name) if degraded(cluster, name).get("status") == "True" else None,
            timeout=INTERVAL + 3,
            what="DetectionDegraded",
        )
        assert down["reason"] == "PrometheusUnreachable"
        assert down["message"] == f"Prometheus at {prometheus.url} is unreachable: Connection refused"
        time.sleep(2 * INTERVAL)
        assert cluster.list(AI) == []  # never a false incident
        assert degraded(cluster, name)["lastTransitionTime"] == down["lastTransitionTime"]
    finally:
        prometheus.start()
    wait_for(lambda: degraded(cluster, name).get("status") == "False", timeout=INTERVAL + 3, what="recovered")
    assert cluster.list(AI) == []


def test_an_alertmanager_alert_is_contained_and_counted_on_the_operator_metrics(
    cluster: Cluster, detecting_operator: OperatorProcess
):
    import os

    name = f"alerted-agent-{cluster.backend}"  # Prometheus and the metrics registry outlive one backend's run
    deploy(cluster, name, [])
    url = f"http://127.0.0.1:{os.environ['TOURNIQUET_HTTP_PORT']}"
    wait_for(lambda: _get(f"{url}/healthz") == "ok", what="the receiver")
    alert = {
        "status": "firing",
        "labels": {"alertname": "RefundsSpike", "agent": name, "namespace": cluster.namespace, "severity": "critical"},
        "annotations": {"summary": "refunds spiking"},
        "startsAt": datetime.now(UTC).isoformat(),
    }
    request = urllib.request.Request(
        f"{url}/alertmanager",
        data=json.dumps({"version": "4", "alerts": [alert]}).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as answer:
        outcome = json.loads(answer.read())["alerts"][0]
    assert outcome["outcome"] == "opened"
    wait_for(lambda: control(cluster, name)[1] == ["issue_refund", "reverse_refund"], timeout=5, what="revoked")
    wait_for(
        lambda: 'tourniquet_incidents_open{class="other",severity="SEV1"} 1.0' in _get(f"{url}/metrics"),
        what="the open-incident gauge",
    )
    metrics = _get(f"{url}/metrics")
    assert 'tourniquet_detection_latency_seconds_count{source="alertmanager"}' in metrics
    wait_for(
        lambda: 'tourniquet_containment_latency_seconds_count{lever="revokeTools"}' in _get(f"{url}/metrics"),
        what="containment latency",
    )


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return str(answer.read().decode())
    except OSError:
        return ""


def suppressed(port: str) -> float:
    """How many times the operator's detection found the incident of a signal's episode resolved (so far, in
    this test process)."""
    return scrape(int(port)).get(
        ("tourniquet_detection_signals_total", (("outcome", "suppressed"), ("source", "prometheus"))), 0.0
    )


def test_an_episode_a_person_resolved_stays_resolved_across_restarts(
    cluster: Cluster, detecting_operator: OperatorProcess, registry, prometheus: PrometheusProcess
):
    import os

    name = f"episode-agent-{cluster.backend}"
    failing = f'sum by (agent) ({TASK_FAILURES}{{agent="$agent"}}) >= 3'
    deploy(cluster, name, [{"name": "failing", "expr": failing, "severity": "SEV2"}])  # SEV2: shadow
    wait_for(lambda: rules_of(cluster, name).get("failing", {}).get("state") == "Inactive", what="rule evaluated")
    port = os.environ["TOURNIQUET_HTTP_PORT"]

    def restart() -> None:
        detecting_operator.stop()
        detecting_operator.start()
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/healthz") == "ok", what="the operator's endpoint")

    # The rule starts firing while the operator is down: one episode, for as long as it fires.
    detecting_operator.stop()
    metrics = AgentMetrics(name, registry[0])
    for _ in range(3):
        metrics.task_failed("refund_request")
    wait_for(lambda: prometheus.query(failing.replace("$agent", name)), what="Prometheus to see it")
    detecting_operator.start()
    (incident,) = wait_for(lambda: incidents_of(cluster, name), timeout=3 * INTERVAL + 10, what="the incident")
    wait_for(lambda: control(cluster, name)[0] == "shadow", what="shadow")

    restart()  # the same episode counts on the same incident
    wait_for(
        lambda: incidents_of(cluster, name)[0]["status"]["detection"]["count"] >= 2,
        timeout=3 * INTERVAL + 10,
        what="a sighting after the restart",
    )
    assert [i["metadata"]["name"] for i in incidents_of(cluster, name)] == [incident["metadata"]["name"]]

    restart()
    cluster.patch(AI, incident["metadata"]["name"], {"spec": {"resolved": True}})  # a person resolves it
    wait_for(lambda: control(cluster, name)[0] == "active", what="shadow released")

    for _ in range(2):  # still firing, still the episode a person resolved: not opened again
        before = suppressed(port)
        restart()
        wait_for(lambda b=before: suppressed(port) > b, timeout=3 * INTERVAL + 10, what="the episode recognised")
        assert [i["metadata"]["name"] for i in incidents_of(cluster, name)] == [incident["metadata"]["name"]]
        assert control(cluster, name)[0] == "active"


def first_sample_at_or_over(prometheus: PrometheusProcess, series: str, threshold: float) -> datetime:
    """When Prometheus scraped the first sample of `series` at or over `threshold`."""
    values = prometheus.query(f"{series}[10m]")[0]["values"]
    return datetime.fromtimestamp(next(float(t) for t, v in values if float(v) >= threshold), UTC)


def test_detection_is_timed_from_the_threshold_crossing_prometheus_shows(
    cluster: Cluster, detecting_operator: OperatorProcess, registry, prometheus: PrometheusProcess
):
    import os

    name = f"crossing-agent-{cluster.backend}"
    series = f'{TASK_FAILURES}{{agent="{name}",task="refund_request"}}'
    deploy(cluster, name, [{"name": "failing", "expr": f"sum by (agent) ({series}) >= 3", "severity": "SEV3"}])
    wait_for(lambda: rules_of(cluster, name).get("failing", {}).get("state") == "Inactive", what="rule evaluated")
    port = int(os.environ["TOURNIQUET_HTTP_PORT"])
    latency = ("tourniquet_detection_latency_seconds_sum", (("source", "prometheus"),))
    before = scrape(port).get(latency, 0.0)

    # The threshold is crossed while the operator is down; it sees the samples seconds later.
    detecting_operator.stop()
    metrics = AgentMetrics(name, registry[0])
    for _ in range(3):
        metrics.task_failed("refund_request")
    wait_for(lambda: prometheus.query(f"{series} >= 3"), what="Prometheus to scrape the third failure")
    crossed = first_sample_at_or_over(prometheus, series, 3)
    # Detection is at most 1 s after that sample (Prometheus's step): start the operator 3 s after the latest.
    wait_for(lambda: datetime.now(UTC) > crossed + timedelta(seconds=4), what="4 s after the crossing")
    detecting_operator.start()

    wait_for(lambda: incidents_of(cluster, name), timeout=3 * INTERVAL + 10, what="the incident")
    def first_entries() -> list[dict[str, Any]]:
        entries = incidents_of(cluster, name)[0].get("status", {}).get("timeline") or []
        return entries if len(entries) >= 2 else []

    timeline = wait_for(first_entries, what="the timeline's first two entries")
    detected, opened = timeline[0], timeline[1]
    assert (detected["event"], opened["event"]) == ("Detected", "Opened"), timeline
    detected_at = datetime.fromisoformat(detected["time"].replace("Z", "+00:00"))
    # The first evaluation over the threshold: Prometheus's 1 s step at or after that sample.
    assert crossed <= detected_at <= crossed + timedelta(seconds=1), (crossed, detected)
    assert detected["agent"] == name and "failing" in detected["message"]
    rule = rules_of(cluster, name)["failing"]
    assert rule["activeAt"] == detected_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    status = incidents_of(cluster, name)[0]["status"]
    assert status["timings"]["detectedSeconds"] >= 3
    assert scrape(port).get(latency, 0.0) - before >= 3
