"""The compensation Job built from a consumer's pod template, and the incident window (pure)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tourniquet.domain.blastradius import incident_window
from tourniquet.domain.compensation_job import JobSpecError, compensation_job_name, desired_compensation_job

HASH = "3f9a0c1d2e" + "0" * 54
INCIDENT = {"metadata": {"name": "dup-refunds", "namespace": "support", "uid": "u-1"}}
WORKLOAD: dict[str, Any] = {
    "kind": "Deployment",
    "metadata": {"name": "refund-agent-worker"},
    "spec": {
        "template": {
            "metadata": {"labels": {"app": "refund-agent"}, "annotations": {"tourniquet.dev/bundle-revision": "2"}},
            "spec": {
                "serviceAccountName": "refund-agent",
                "imagePullSecrets": [{"name": "registry"}],
                "volumes": [{"name": "tourniquet-bundle", "configMap": {"name": "refund-agent-bundle-2"}}],
                "containers": [
                    {
                        "name": "worker",
                        "image": "ghcr.io/example/refund-agent:1.4.2",
                        "args": ["--queue", "refunds"],
                        "env": [
                            {"name": "PAYMENTS_TOKEN", "valueFrom": {"secretKeyRef": {"name": "pay", "key": "t"}}},
                            {"name": "TOURNIQUET_LEDGER", "value": "/var/lib/tourniquet/ledger.db"},
                        ],
                        "envFrom": [{"secretRef": {"name": "refund-agent-env"}}],
                        "volumeMounts": [{"name": "tourniquet-bundle", "mountPath": "/etc/tourniquet/bundle"}],
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
                        "ports": [{"containerPort": 8080}],
                    },
                    {"name": "sidecar", "image": "proxy:1"},
                ],
            },
        }
    },
}


def job(**overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "incident": INCIDENT,
        "agent": "refund-agent",
        "workload": WORKLOAD,
        "request_json": '{"incident":"support/dup-refunds"}',
        "plan_hash": HASH,
        "ledger_secret": {"name": "refund-ledger", "key": "url"},
        "compensators": ["refund_agent.compensators"],
    }
    options.update(overrides)
    return desired_compensation_job(**options)


def test_the_worker_runs_in_the_agent_s_image_with_its_secrets_and_not_under_its_pod_selector() -> None:
    body = job()
    pod = body["spec"]["template"]
    [worker] = pod["spec"]["containers"]

    assert body["metadata"]["name"] == "dup-refunds-compensate-3f9a0c1d2e"
    assert body["metadata"]["ownerReferences"][0]["name"] == "dup-refunds"
    assert worker["image"] == "ghcr.io/example/refund-agent:1.4.2"
    assert worker["command"] == ["python", "-m", "tourniquet.runtime.compensate"]
    assert "args" not in worker and "livenessProbe" not in worker and "ports" not in worker
    assert worker["envFrom"] == [{"secretRef": {"name": "refund-agent-env"}}]
    assert worker["volumeMounts"] == WORKLOAD["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    env = {e["name"]: e for e in worker["env"]}
    assert env["PAYMENTS_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "pay", "key": "t"}}
    assert env["TOURNIQUET_LEDGER"] == {
        "name": "TOURNIQUET_LEDGER", "valueFrom": {"secretKeyRef": {"name": "refund-ledger", "key": "url"}},
    }
    assert env["TOURNIQUET_INCIDENT"]["value"] == "support/dup-refunds"
    assert env["TOURNIQUET_COMPENSATION_PLAN_HASH"]["value"] == HASH
    assert env["TOURNIQUET_COMPENSATORS"]["value"] == "refund_agent.compensators"
    assert "app" not in pod["metadata"]["labels"]  # the agent's NetworkPolicy does not select it
    assert pod["spec"]["restartPolicy"] == "Never" and pod["spec"]["serviceAccountName"] == "refund-agent"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}]
    assert WORKLOAD["spec"]["template"]["spec"]["containers"][0]["args"] == ["--queue", "refunds"]  # not mutated


def test_the_name_is_deterministic_and_fits_a_label() -> None:
    assert job() == job()
    assert job(plan_hash="ab" * 32)["metadata"]["name"] != job()["metadata"]["name"]
    long_a, long_b = "a" * 60 + "-x", "a" * 60 + "-y"
    name_a, name_b = compensation_job_name(long_a, HASH), compensation_job_name(long_b, HASH)
    assert len(name_a) <= 63 and len(name_b) <= 63 and name_a != name_b


def test_another_container_or_none_is_said() -> None:
    assert job(container="sidecar")["spec"]["template"]["spec"]["containers"][0]["image"] == "proxy:1"
    with pytest.raises(JobSpecError, match=r"has no container agent .*worker, sidecar"):
        job(container="agent")
    with pytest.raises(JobSpecError, match="no container to run the worker in"):
        job(workload={"kind": "Deployment", "metadata": {"name": "w"}, "spec": {"template": {"spec": {}}}})


def at(hms: str) -> datetime:
    return datetime.fromisoformat(f"2026-11-21T{hms}+00:00")


CREATED = {"creationTimestamp": "2026-11-21T03:10:00Z"}
DETECTED = {"detection": {"firstSeen": "2026-11-21T03:05:00Z"}}
CONTAINED = {"timeline": [{"event": "Contained", "time": "2026-11-21T03:10:02Z"},
                          {"event": "Contained", "time": "2026-11-21T03:30:00Z"}]}


@pytest.mark.parametrize(
    ("incident", "start", "end", "source"),
    [
        (
            {"metadata": CREATED, "spec": {"window": {"start": "2026-11-21T03:02:00Z", "end": "2026-11-21T03:40:00Z"}}},
            "03:02:00", "03:40:00", "spec.window.start",
        ),
        (
            {"metadata": CREATED, "status": {**DETECTED, **CONTAINED}},
            "03:05:00", "03:10:02", "the first detection signal",
        ),
        ({"metadata": CREATED, "status": CONTAINED}, "03:10:00", "03:10:02", "the incident's creation"),
        ({"metadata": CREATED}, "03:10:00", None, "the incident's creation"),
    ],
)
def test_the_incident_window(incident: dict[str, Any], start: str, end: str | None, source: str) -> None:
    window = incident_window(incident)

    assert (window.start, window.end, window.source) == (at(start), at(end) if end else None, source)
