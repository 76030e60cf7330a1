"""`tourniquet run` as its own process, as the container runs it: /metrics after a containment, JSON logs,
and the watch-freshness signals on a healthy watch."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import AI, ROOT, Cluster, example, free_port, scrape, wait_for
from tests.operator.test_examples import start
from tests.operator.test_incidents import contained


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    http_port: int
    probe_port: int
    log: Path

    def lines(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.strip()]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def spawn_operator(cluster: Cluster, kubeconfig: str, tmp_path: Path, **settings: str) -> Iterator[Running]:
    """`tourniquet run` in its own process, serving the test's namespace, with the settings given (environment
    variables) over the tests' own: e.g. TOURNIQUET_RESYNC_SECONDS="300", the default of a real install."""
    http, probes = free_port(), free_port()
    log = tmp_path / "operator.log"
    env = {
        **os.environ,
        "KUBECONFIG": kubeconfig,
        "PYTHONPATH": str(ROOT / "operator"),
        "TOURNIQUET_HTTP_PORT": str(http),
        "TOURNIQUET_HTTP_HOST": "127.0.0.1",
        "TOURNIQUET_CANARY_SECONDS": "0.5",
        **settings,
    }
    for unset in ("TOURNIQUET_LOG_FORMAT", "TOURNIQUET_CANARY_NAMESPACE", "POD_NAMESPACE"):
        env.pop(unset, None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tourniquet.cli",
                "run",
                f"--namespace={cluster.namespace}",  # so the canary lives in the served namespace
                "--log-format",
                "json",
                f"--liveness=http://127.0.0.1:{probes}/healthz",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    running = Running(process, http, probes, log)
    try:
        wait_for(lambda: _healthy(probes) and _healthy(http), timeout=30, what="the operator serving")
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def running(cluster: Cluster, kubeconfig: str, tmp_path: Path) -> Iterator[Running]:
    with spawn_operator(cluster, kubeconfig, tmp_path) as process:
        yield process


def test_metrics_show_the_containment_latency_of_each_lever_applied(cluster: Cluster, running: Running) -> None:
    before = scrape(running.http_port)
    assert not [k for k, v in before.items() if k[0] == "tourniquet_containment_latency_seconds_count" and v]

    start(cluster)
    cluster.apply(example("sev1-incident.yaml"))  # the playbook: revokeTools, then drain
    wait_for(lambda: contained(cluster, "refund-agent-duplicate-refunds"), what="Contained")

    def count(lever: str) -> float:
        return scrape(running.http_port).get(("tourniquet_containment_latency_seconds_count", (("lever", lever),)), 0.0)

    wait_for(
        lambda: count("revokeTools") >= 1 and count("drain") >= 1 and count("all") >= 1,
        what="both levers and the incident as a whole observed",
    )
    metrics = scrape(running.http_port)
    assert count("shadow") == 0  # not applied, not observed
    for lever in ("revokeTools", "drain"):
        total = metrics[("tourniquet_containment_latency_seconds_sum", (("lever", lever),))]
        assert 0 < total < 30, (lever, total)
        assert metrics[("tourniquet_containment_latency_seconds_bucket", (("le", "+Inf"), ("lever", lever)))] >= 1
    assert metrics[("tourniquet_incidents_open", (("class", "tool-misuse"), ("severity", "SEV1")))] == 1
    # The incident as a whole: the status's containedSeconds, from the start it names (timings.startedFrom).
    timings = cluster.status(AI, "refund-agent-duplicate-refunds")["timings"]
    assert timings["startedFrom"] == "firstSeen"  # applied by hand: no opened-at annotation
    assert metrics[("tourniquet_containment_latency_seconds_sum", (("lever", "all"),))] == timings["containedSeconds"]
    # The watch is healthy: the canary comes back.
    wait_for(
        lambda: (
            scrape(running.http_port).get(("tourniquet_watch_stale", (("canary_namespace", cluster.namespace),))) == 0
        ),
        what="a fresh watch",
    )


def test_json_logs_are_one_object_per_line_and_name_the_object(cluster: Cluster, running: Running) -> None:
    start(cluster)
    cluster.apply(example("sev2-shadow.yaml"))
    wait_for(lambda: contained(cluster, "refund-agent-rude-replies"), what="Contained")
    wait_for(
        lambda: any('"name": "refund-agent-rude-replies"' in line for line in running.lines()),
        what="a log line about the incident",
    )
    entries = [json.loads(line) for line in running.lines()]  # every line is JSON, or this fails
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
    about = [e for e in entries if e.get("object", {}).get("name") == "refund-agent-rude-replies"]
    assert about and all(e["object"]["kind"] == "AgentIncident" for e in about)
    assert all(e["object"]["namespace"] == cluster.namespace for e in about)
    assert any(e["logger"].startswith("tourniquet.") for e in entries)
    assert any("Started the watch canary" in e["message"] for e in entries)
