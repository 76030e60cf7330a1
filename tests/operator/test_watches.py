"""What the operator's watches ask the API server for: of the ConfigMaps and NetworkPolicies, its own only."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Cluster, wait_for
from tests.operator.test_examples import start
from tests.operator.test_incidents import contained, incident


def watches_of(cluster: Cluster, resource: str) -> list[dict[str, str]]:
    """The query of every watch request the emulator was sent for `resource`."""

    def queries() -> list[dict[str, Any]]:
        return [
            dict(r.params)
            for r in cluster.emulator._requests
            if r.url.path.endswith(f"/{resource}") and r.params.get("watch") == "true"
        ]

    return cluster.server.call(queries)


@pytest.mark.emulator  # the request log
def test_the_operator_is_sent_only_the_configmaps_and_network_policies_it_owns(cluster: Cluster, operator) -> None:
    start(cluster)  # the agent's bundle pinned and its consumer wired: the watched bundle ConfigMap was seen
    cluster.apply([incident("dup-refunds")])
    wait_for(lambda: contained(cluster, "dup-refunds"), what="the incident contained")

    configmaps = watches_of(cluster, "configmaps")
    assert configmaps, "the operator never watched ConfigMaps"
    for query in configmaps:  # not the evidence ConfigMap it just wrote, nor anyone else's
        assert query.get("labelSelector") == (
            "app.kubernetes.io/managed-by=tourniquet,tourniquet.dev/component in (bundle,control)"
        ), query
    policies = watches_of(cluster, "networkpolicies")
    assert policies, "the operator never watched NetworkPolicies"
    for query in policies:
        assert query.get("labelSelector") == "app.kubernetes.io/managed-by=tourniquet", query
