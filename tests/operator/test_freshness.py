"""Watch freshness with the real operator: the canary comes back through the AgentIncidents watch, a
frozen watch is reported stale (on /metrics and in Kopf's health endpoint), and it recovers."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import AD, AI, Cluster, OperatorProcess, free_port, operator_scope, scrape, wait_for
from tests.operator.test_incidents import contained, control, incident, start_agent


@pytest.fixture
def ports(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    http, probes = free_port(), free_port()
    monkeypatch.setenv("TOURNIQUET_HTTP_PORT", str(http))
    monkeypatch.setenv("TOURNIQUET_CANARY_SECONDS", "0.3")
    monkeypatch.setenv("TOURNIQUET_CANARY_STALE_SECONDS", "1.5")
    monkeypatch.setenv("TOURNIQUET_CANARY_NAMESPACE", cluster.namespace)
    return {"http": http, "probes": probes}


@pytest.fixture
def watched(cluster: Cluster, kubeconfig: str, ports: dict[str, int]) -> Iterator[OperatorProcess]:
    liveness = f"--liveness=http://127.0.0.1:{ports['probes']}/healthz"
    process = OperatorProcess(kubeconfig, (liveness,), scope=operator_scope(cluster)).start()
    yield process
    process.stop()


def gauge(port: int, name: str, **labels: str) -> float | None:
    return scrape(port).get((name, tuple(sorted(labels.items()))))


def probe(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        result: dict[str, Any] = json.loads(response.read())["watchFreshness"]
    return result


@pytest.mark.emulator  # frozen watches
def test_a_frozen_incident_watch_goes_stale_and_recovers(cluster: Cluster, watched: OperatorProcess, ports):
    http, ns = ports["http"], cluster.namespace
    start_agent(cluster)
    wait_for(
        lambda: (
            gauge(http, "tourniquet_watch_canary_lag_seconds", canary_namespace=ns) is not None
            and gauge(http, "tourniquet_watch_stale", canary_namespace=ns) == 0
        ),
        what="the first canary back",
    )
    assert gauge(http, "tourniquet_watch_canary_lag_seconds", canary_namespace=ns) < 1.5

    freeze = cluster.server.call(cluster.emulator.freeze_watches, AI)
    try:
        wait_for(
            lambda: gauge(http, "tourniquet_watch_stale", canary_namespace=ns) == 1,
            timeout=10,
            what="stale",
        )
        assert gauge(http, "tourniquet_watch_canary_lag_seconds", canary_namespace=ns) > 1.5
        assert gauge(http, "tourniquet_watch_last_event_age_seconds", resource="agentincidents") > 1.0
        # Kopf's health endpoint (the probes' URL) says so too, and still answers 200: a restart would not
        # help while the API server is the problem.
        reported = probe(ports["probes"])
        assert reported["status"] == "stale"
        assert "has not come back through the AgentIncidents watch" in reported["canaries"][ns]["message"]
        # What a freeze costs, and why it must be seen: an incident opened now is not contained.
        cluster.apply([incident("unseen", contain=["shadow"])])
        time.sleep(1)
        assert not cluster.status(AI, "unseen") and control(cluster)[0] == "active"
    finally:
        cluster.server.call(freeze.thaw)
    wait_for(
        lambda: gauge(http, "tourniquet_watch_stale", canary_namespace=ns) == 0,
        timeout=10,
        what="fresh again",
    )
    wait_for(lambda: contained(cluster, "unseen"), what="the held incident contained after the thaw")
    assert control(cluster)[0] == "shadow"


def test_the_canary_is_never_acted_on(cluster: Cluster, watched: OperatorProcess, ports, oncall_kubeconfig: str):
    ns = cluster.namespace
    start_agent(cluster)  # a real agent next to it: the canary must not touch it either
    wait_for(lambda: gauge(ports["http"], "tourniquet_watch_stale", canary_namespace=ns) == 0, what="fresh")
    time.sleep(1.5)  # several canary writes, resync and re-assert passes
    canary = cluster.get(AI, "tourniquet-canary")
    assert canary["metadata"]["labels"]["tourniquet.dev/canary"] == "true"
    assert canary["spec"]["resolved"] is True and "Not an incident" in canary["spec"]["summary"]
    assert "status" not in canary or not canary["status"]  # no phase, no conditions
    assert not canary["metadata"].get("finalizers")  # deleting it never hangs
    assert set(canary["metadata"].get("annotations") or {}) == {"tourniquet.dev/canary-written"}
    involved = [e for e in cluster.list("v1/events") if e["involvedObject"]["name"] == "tourniquet-canary"]
    assert involved == []
    assert not [k for k, v in scrape(ports["http"]).items() if k[0] == "tourniquet_incidents_open" and v]
    agent = {c["type"]: c for c in cluster.status(AD, "refund-agent")["conditions"]}
    assert agent["Contained"]["status"] == "False"
    # On-call does not see it among the open incidents.
    from click.testing import CliRunner

    from tourniquet.cli import main as cli

    status = CliRunner().invoke(cli, ["status", "--kubeconfig", oncall_kubeconfig, "-n", cluster.namespace])
    assert status.exit_code == 0 and "No open incidents." in status.output, status.output
