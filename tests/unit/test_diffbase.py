"""The operator's diff-base storage: Kopf's essence of an object, built without copying its status first."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from tourniquet.handlers.startup import SlimDiffBaseStorage

INCIDENT = {
    "apiVersion": "tourniquet.dev/v1alpha1",
    "kind": "AgentIncident",
    "metadata": {
        "name": "refunds-loop",
        "namespace": "payments",
        "uid": "u1",
        "resourceVersion": "17",
        "labels": {"team": "payments"},
        "annotations": {
            "tourniquet.dev/last-handled-configuration": '{"spec": {}}',
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
            "owner": "on-call",
        },
        "finalizers": ["tourniquet.dev/release-levers"],
    },
    "spec": {"agents": ["refund-agent"], "severity": "SEV1", "contain": ["drain"]},
    "status": {"phase": "Contained", "timeline": [{"event": "Opened"}], "levers": [{"name": "drain"}]},
}


@pytest.mark.parametrize(
    ("body", "extra_fields"),
    [
        (INCIDENT, None),
        (INCIDENT, ["status.phase"]),
        (INCIDENT, [("status", "levers")]),
        (INCIDENT, ["metadata.finalizers"]),
        ({**INCIDENT, "status": {}}, None),
        ({k: v for k, v in INCIDENT.items() if k != "status"}, ["status.phase"]),
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
    with_status = slim.build(body=kopf.Body(INCIDENT), extra_fields=["status.timeline"])
    assert with_status["status"]["timeline"] == INCIDENT["status"]["timeline"]
    assert with_status["status"]["timeline"] is not INCIDENT["status"]["timeline"]
    assert "status" not in slim.build(body=kopf.Body(INCIDENT))
