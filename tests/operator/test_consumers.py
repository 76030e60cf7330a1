"""Consumers as a platform team meets them: applied after their agent (GitOps applies in any order), or
named by two agents. Run with the resync of a real install (5 minutes), so nothing here waits on it."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AD, CM, DEPLOY, Cluster, example, wait_for
from tests.operator.test_running_operator import Running, spawn_operator


@pytest.fixture
def installed(cluster: Cluster, kubeconfig: str, tmp_path: Path) -> Iterator[Running]:
    """The operator with the default timers: resync every 300 s, levers re-asserted every 10 s."""
    settings = {"TOURNIQUET_RESYNC_SECONDS": "300", "TOURNIQUET_REASSERT_SECONDS": "10"}
    with spawn_operator(cluster, kubeconfig, tmp_path, **settings) as process:
        yield process


def ready(cluster: Cluster, agent: str) -> dict[str, Any]:
    return next((c for c in cluster.status(AD, agent).get("conditions", []) if c["type"] == "Ready"), {})


def template(cluster: Cluster, name: str = "refund-agent-worker") -> dict[str, Any]:
    return (cluster.get(DEPLOY, name) or {}).get("spec", {}).get("template") or {}


def wired_to(cluster: Cluster, name: str = "refund-agent-worker") -> str | None:
    return (template(cluster, name).get("metadata") or {}).get("annotations", {}).get("tourniquet.dev/bundle")


def test_an_agent_applied_before_its_consumer_is_ready_once_the_consumer_appears(cluster: Cluster, installed):
    worker, agent = example()
    cluster.apply([agent])
    refused = wait_for(lambda: ready(cluster, "refund-agent").get("reason") == "InvalidSpec", what="InvalidSpec")
    assert refused
    assert "consumer Deployment refund-agent-worker not found" in ready(cluster, "refund-agent")["message"]

    cluster.apply([worker])  # the next commit, or the next sync wave
    wait_for(lambda: ready(cluster, "refund-agent").get("status") == "True", timeout=30, what="Ready")
    assert wired_to(cluster) == "refund-agent-bundle-1"


def test_a_second_agent_naming_a_wired_consumer_is_refused_and_never_unwires_it(cluster: Cluster, installed):
    cluster.apply(example())
    wait_for(lambda: ready(cluster, "refund-agent").get("status") == "True", what="the first agent Ready")
    wired = template(cluster)
    assert wired_to(cluster) == "refund-agent-bundle-1"

    second = copy.deepcopy(example()[1])
    second["metadata"]["name"] = "copycat-agent"
    second["spec"]["bundle"]["prompt"]["template"] = "Another agent's prompt."
    cluster.apply([second])
    refused = wait_for(
        lambda: ready(cluster, "copycat-agent") if ready(cluster, "copycat-agent").get("reason") else None,
        what="the second agent's Ready condition",
    )
    assert (refused["status"], refused["reason"]) == ("False", "InvalidSpec")
    assert refused["message"] == "consumer Deployment/refund-agent-worker already wired by agent refund-agent"
    assert template(cluster) == wired
    assert cluster.get(CM, "copycat-agent-control") is None  # refused: nothing was created for it

    cluster.delete(AD, "copycat-agent")
    wait_for(lambda: cluster.get(AD, "copycat-agent") is None, what="the second agent deleted")
    assert template(cluster) == wired, "the consumer stays as the first agent wired it"
    assert ready(cluster, "refund-agent")["status"] == "True"
