"""The readiness checklist's decisions (pure): each item from what was observed."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.conftest import example

from tourniquet.domain import readiness
from tourniquet.models import AgentDeploymentSpec

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
WORKER, AGENT = example()


def inputs(**changes: Any) -> readiness.ReadinessInputs:
    worker = copy.deepcopy(WORKER)
    worker["spec"]["template"]["metadata"]["annotations"] = {"tourniquet.dev/bundle-revision": "3"}
    base: dict[str, Any] = {
        "agent": "refund-agent",
        "spec": AgentDeploymentSpec.model_validate(AGENT["spec"]),
        "raw_spec": AGENT["spec"],
        "control": {"data": {"mode": "active", "revokedTools": "[]"}},
        "acks": [],
        "drills": [],
        "consumers": {("Deployment", "refund-agent-worker"): worker},
        "active_revision": 3,
        "now": NOW,
    }
    base.update(changes)
    return readiness.ReadinessInputs(**base)


def ack(mode: str = "active", ago: float = 60, revoked: tuple[str, ...] = ()) -> readiness.Ack:
    return readiness.Ack("worker-1", mode, revoked, NOW - timedelta(seconds=ago))


def drill(days: float = 1, seconds: float = 2.5, passed: bool = True) -> readiness.DrillRecord:
    return readiness.DrillRecord("weekly", NOW - timedelta(days=days), passed, seconds, 1.0)


@pytest.mark.parametrize(
    ("acks", "drills", "ready", "says"),
    [
        ([], [], False, "no agent pod acknowledged"),
        ([ack()], [], False, "no drill contained it in under 60s in the last 30 days"),
        ([ack(ago=2000)], [drill()], False, "no agent pod acknowledged the control ConfigMap within the last 15 min"),
        ([ack(mode="shadow")], [drill()], False, "applies mode shadow (revoked: none) but the control ConfigMap says"),
        ([ack()], [drill(days=40)], False, "no drill contained it"),
        ([ack()], [drill(seconds=75)], False, "no drill contained it in under 60s"),
        ([ack()], [drill(passed=False)], False, "no drill contained it"),
        ([ack()], [drill()], True, "drill weekly contained it in 2.5s on 2026-11-20"),
    ],
)
def test_the_kill_switch_needs_a_fresh_matching_acknowledgement_and_a_recent_fast_drill(acks, drills, ready, says):
    checklist = readiness.compute_readiness(inputs(acks=acks, drills=drills))
    item = next(i for i in checklist["items"] if i["name"] == "killSwitch")
    assert item["ready"] is ready and says in item["message"], item
    assert bool(item["fix"]) is not ready


@pytest.mark.parametrize(
    ("image", "floating"),
    [
        ("ghcr.io/example/agent:1.4.2", False),
        ("ghcr.io/example/agent@sha256:" + "a" * 64, False),
        ("localhost:5000/agent:2", False),
        ("ghcr.io/example/agent:latest", True),
        ("ghcr.io/example/agent", True),
        ("localhost:5000/agent", True),
        ("", True),
    ],
)
def test_floating_images(image: str, floating: bool) -> None:
    assert readiness.floating_image(image) is floating


def test_a_consumer_on_another_revision_is_not_pinned() -> None:
    item = readiness.version_pin(inputs(active_revision=4))
    assert item[0] is False and "runs bundle revision 3 while 4 is active" in item[1]


def test_compensation_covers_reversal_tools_and_refuses_none() -> None:
    assert readiness.compensation(inputs())[0] is True  # reverse_refund is issue_refund's reversal
    raw = copy.deepcopy(AGENT["spec"])
    raw["bundle"]["tools"].append({"name": "send_email", "compensation": {"type": "none"}})
    raw["bundle"]["tools"].append(
        {"name": "close_ticket", "compensation": {"type": "mitigation", "description": "reopen it"}}
    )
    ok, message, _ = readiness.compensation(inputs(spec=AgentDeploymentSpec.model_validate(raw)))
    assert not ok and message == "write tool(s) without a reversal or mitigation: send_email"


@pytest.mark.parametrize(
    ("env", "raw_ledger", "ready", "says"),
    [
        ([], False, False, "keeps its ledger in the pod"),
        ([{"name": "TOURNIQUET_LEDGER", "value": "/var/lib/tourniquet/ledger.db"}], False, False, "in the pod"),
        ([{"name": "TOURNIQUET_LEDGER", "value": "postgresql://ledger/agents"}], False, True, "30 days"),
        (
            [{"name": "TOURNIQUET_LEDGER_DSN", "valueFrom": {"secretKeyRef": {"name": "l", "key": "dsn"}}}],
            False,
            True,
            "",
        ),
        ([], True, True, "shared ledger"),  # spec.ledger
        ([{"name": "TOURNIQUET_TRACE_RETENTION_DAYS", "value": "7"}], True, False, "keeps decision traces 7 days"),
        ([{"name": "TOURNIQUET_TRACE_RETENTION_DAYS", "valueFrom": {"configMapKeyRef": {}}}], True, False, "cannot"),
        ([{"name": "TOURNIQUET_TRACE_RETENTION_DAYS", "value": "90"}], True, True, "90 days"),
    ],
)
def test_trace_retention(env, raw_ledger, ready, says) -> None:
    worker = copy.deepcopy(WORKER)
    worker["spec"]["template"]["spec"]["containers"][0]["env"] = env
    raw = {**AGENT["spec"], **({"ledger": {"secretRef": {"name": "ledger"}}} if raw_ledger else {})}
    ok, message, _ = readiness.trace_retention(
        inputs(raw_spec=raw, consumers={("Deployment", "refund-agent-worker"): worker})
    )
    assert ok is ready and says in message, message


def test_the_summary_counts_ready_items_and_the_messages_do_not_move_with_time() -> None:
    first = readiness.compute_readiness(inputs(acks=[ack(ago=10)], drills=[drill()]))
    later = readiness.compute_readiness(inputs(acks=[ack(ago=300)], drills=[drill()], now=NOW))
    assert first == later  # a pass over an unchanged agent writes nothing
    assert first["summary"] == "3/5" and first["ready"] == 3
    assert [i["name"] for i in first["items"] if i["ready"]] == ["killSwitch", "versionPin", "compensation"]


def test_acknowledgements_parse_and_old_ones_are_pruned() -> None:
    fresh = {"mode": "shadow", "revokedTools": ["b", "a"], "reportedAt": NOW.isoformat()}
    old = {"mode": "active", "revokedTools": [], "reportedAt": (NOW - timedelta(days=8)).isoformat()}
    acks = readiness.parse_acks({"p1": json.dumps(fresh), "p2": json.dumps(old), "p3": "not json"})
    assert [(a.pod, a.mode, a.revoked) for a in acks] == [("p1", "shadow", ("a", "b")), ("p2", "active", ())]
    assert readiness.stale_acks(acks, NOW) == ["p2"]
