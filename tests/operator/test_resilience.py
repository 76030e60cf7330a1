"""Restarts and API faults: the operator converges without duplicates."""

from __future__ import annotations

import pytest

from tests.conftest import AD, CM, DEPLOY, NP, Cluster, example, wait_for
from tests.operator.test_agentdeployment import active_revision, bundle_configmaps, wired_revision


@pytest.mark.emulator  # fault injection
def test_restarted_mid_way_it_converges_without_duplicates(cluster: Cluster, operator):
    # The consumer patch hangs, so the operator is stopped after pinning but before wiring.
    slow = cluster.fault("patch", DEPLOY, status=None, delay=30, count=1)
    cluster.apply(example())
    wait_for(lambda: cluster.get(CM, "refund-agent-bundle-1"), what="bundle pinned")
    wait_for(lambda: slow.hits >= 1, what="the wiring patch under way")
    operator.stop()
    assert wired_revision(cluster) is None

    operator.start()
    wait_for(lambda: wired_revision(cluster) == "1" and active_revision(cluster) == 1, timeout=15, what="converged")
    assert bundle_configmaps(cluster) == ["refund-agent-bundle-1"]
    creates = [w for w in cluster.writes(CM) if w.method == "POST" and "bundle.json" in str(w.body)]
    assert len(creates) == 1


@pytest.mark.emulator  # fault injection
def test_injected_conflicts_and_server_errors_are_retried(cluster: Cluster, operator):
    cluster.fault("create", CM, status=500, count=2)
    cluster.fault("patch", DEPLOY, status=409, count=2)
    cluster.fault("create", NP, status=503, count=1)
    cluster.fault("patch", AD, status=500, count=1, subresource="status")
    cluster.apply(example())
    wait_for(lambda: wired_revision(cluster) == "1" and active_revision(cluster) == 1, timeout=20, what="converged")
    assert bundle_configmaps(cluster) == ["refund-agent-bundle-1"]
    assert cluster.get(NP, "refund-agent-egress") is not None
