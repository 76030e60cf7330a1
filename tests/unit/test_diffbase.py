"""The operator's diff-base storage: Kopf's essence of an object, built without copying its status first, and none
for the kinds no change handler or daemon compares."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from tourniquet.handlers.startup import UNCOMPARED_KINDS, SlimDiffBaseStorage

AGENT = {
    "apiVersion": "tourniquet.dev/v1alpha1",
    "kind": "AgentDeployment",
    "metadata": {
        "name": "refund-agent",
        "namespace": "payments",
        "uid": "u1",
        "resourceVersion": "17",
        "labels": {"team": "payments"},
        "annotations": {
            "tourniquet.dev/last-handled-configuration": '{"spec": {}}',
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
            "owner": "on-call",
        },
        "finalizers": ["tourniquet.dev/finalizer"],
    },
    "spec": {"bundle": {"model": "gpt-x"}, "consumers": [{"kind": "Deployment", "name": "refund-worker"}]},
    "status": {"phase": "Ready", "history": [{"revision": 1}], "levers": [{"name": "drain"}]},
}


@pytest.mark.parametrize(
    ("body", "extra_fields"),
    [
        (AGENT, None),
        (AGENT, ["status.phase"]),
        (AGENT, [("status", "levers")]),
        (AGENT, ["metadata.finalizers"]),
        ({**AGENT, "status": {}}, None),
        ({k: v for k, v in AGENT.items() if k != "status"}, ["status.phase"]),
        ({"metadata": {"name": "bare"}, "data": {"a": "b"}}, None),
    ],
)
def test_the_essence_is_kopfs_own(body: dict[str, Any], extra_fields: list[Any] | None) -> None:
    kopfs = kopf.AnnotationsDiffBaseStorage(prefix="tourniquet.dev", key="last-handled-configuration")
    slim = SlimDiffBaseStorage(prefix="tourniquet.dev", key="last-handled-configuration")
    expected = kopfs.build(body=kopf.Body(body), extra_fields=extra_fields)
    assert slim.build(body=kopf.Body(body), extra_fields=extra_fields) == expected
    assert "status" not in expected or extra_fields


def test_the_status_is_not_copied() -> None:
    """The status of the essence (a handler for a status field) is a copy; without one, none is taken."""
    slim = SlimDiffBaseStorage(prefix="tourniquet.dev", key="last-handled-configuration")
    with_status = slim.build(body=kopf.Body(AGENT), extra_fields=["status.history"])
    assert with_status["status"]["history"] == AGENT["status"]["history"]
    assert with_status["status"]["history"] is not AGENT["status"]["history"]
    assert "status" not in slim.build(body=kopf.Body(AGENT))


# What a watch delivers of each kind nothing compares, with Kopf's annotation of an earlier essence on it.
UNCOMPARED = {
    "configmaps": ("v1", "ConfigMap"),
    "networkpolicies": ("networking.k8s.io/v1", "NetworkPolicy"),
    "jobs": ("batch/v1", "Job"),
    "agentincidents": ("tourniquet.dev/v1alpha1", "AgentIncident"),
    "agentregressioncases": ("tourniquet.dev/v1alpha1", "AgentRegressionCase"),
}


@pytest.mark.parametrize(("api_version", "kind"), sorted(UNCOMPARED.values()))
def test_no_essence_is_built_or_read_for_a_kind_nothing_compares(api_version: str, kind: str) -> None:
    slim = SlimDiffBaseStorage(prefix="tourniquet.dev", key="last-handled-configuration")
    body = kopf.Body({**AGENT, "apiVersion": api_version, "kind": kind, "data": {"control.json": "{}"}})
    assert slim.build(body=body) == {}
    assert slim.fetch(body=body) is None


def test_an_object_without_its_kind_gets_kopfs_essence() -> None:
    """A listed item may come without apiVersion and kind: its essence is Kopf's, as for a compared kind."""
    slim = SlimDiffBaseStorage(prefix="tourniquet.dev", key="last-handled-configuration")
    bare = {key: value for key, value in AGENT.items() if key not in ("apiVersion", "kind")}
    assert slim.build(body=kopf.Body(bare))["spec"] == AGENT["spec"]
    assert slim.fetch(body=kopf.Body(bare)) == {"spec": {}}


def test_no_change_handler_or_daemon_watches_a_kind_without_an_essence() -> None:
    """UNCOMPARED_KINDS holds exactly the kinds the operator watches that no change handler or daemon compares."""
    import tourniquet.handlers  # noqa: F401  registers the handlers

    registry = kopf.get_default_registry()
    compared = {h.selector.any_name for r in (registry._changing, registry._spawning) for h in r.get_all_handlers()}
    watched = {h.selector.any_name for r in (registry._watching, registry._indexing) for h in r.get_all_handlers()}
    assert set(UNCOMPARED.values()) == UNCOMPARED_KINDS
    assert not compared & set(UNCOMPARED)
    assert watched - compared == set(UNCOMPARED)
