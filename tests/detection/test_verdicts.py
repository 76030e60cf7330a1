"""Verdicts (pending → firing), the agent's detection status, signal names and Alertmanager alerts (pure)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from tourniquet.domain import detection
from tourniquet.domain.detection import RuleState, Signal, decide_rule, plan_detection_status
from tourniquet.models import AgentIncidentSpec, Severity
from tourniquet.models.agentincident import IncidentClass
from tourniquet.models.common import DNS_SUBDOMAIN

T0 = datetime(2026, 11, 21, 3, 2, tzinfo=UTC)
INACTIVE, PENDING, FIRING = RuleState.INACTIVE, RuleState.PENDING, RuleState.FIRING


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("previous", "since", "active", "now", "for_", "state", "active_at", "cleared"),
    [
        (INACTIVE, None, False, 0, 0, INACTIVE, None, False),
        (INACTIVE, None, True, 0, 0, FIRING, 0, False),  # no `for`: fires at once
        (INACTIVE, None, True, 0, 30, PENDING, 0, False),
        (PENDING, 0, True, 29, 30, PENDING, 0, False),
        (PENDING, 0, True, 30, 30, FIRING, 0, False),  # lasted `for`
        (FIRING, 0, True, 300, 30, FIRING, 0, False),  # the episode keeps its start
        (PENDING, 0, False, 10, 30, INACTIVE, None, False),  # pending never fired: nothing to clear
        (FIRING, 0, False, 400, 30, INACTIVE, None, True),
        (RuleState.INVALID, None, True, 50, 0, FIRING, 50, False),  # fixed rule: a new episode
        (FIRING, None, True, 60, 0, FIRING, 60, False),  # lost its start (old status): starts now
    ],
)
def test_pending_then_firing_like_prometheus(previous, since, active, now, for_, state, active_at, cleared):
    verdict = decide_rule(previous, None if since is None else at(since), active, at(now), for_)
    assert verdict.state == state
    assert verdict.active_at == (None if active_at is None else at(active_at))
    assert verdict.cleared == cleared


def rules(state: str = "Inactive") -> list[dict]:
    return [{"name": "storm", "expr": "x > 3", "state": state}]


OK = (False, "Evaluating", "1 rule(s) evaluated against Prometheus at http://prom:9090")
DOWN = (True, "PrometheusUnreachable", "Prometheus at http://prom:9090 is unreachable: Connection refused")
READY = {"type": "Ready", "status": "True", "reason": "Reconciled", "message": "m", "lastTransitionTime": "t"}


def test_the_status_is_written_with_every_other_condition_kept():
    patch = plan_detection_status({"conditions": [READY]}, rules(), OK, now=T0, generation=3)
    assert patch is not None
    assert patch["detection"] == {"rules": rules(), "lastEvaluatedAt": "2026-11-21T03:02:00Z"}
    assert READY in patch["conditions"]
    degraded = next(c for c in patch["conditions"] if c["type"] == "DetectionDegraded")
    assert degraded == {
        "type": "DetectionDegraded",
        "status": "False",
        "reason": "Evaluating",
        "message": OK[2],
        "lastTransitionTime": "2026-11-21T03:02:00Z",
        "observedGeneration": 3,
    }


def test_an_unchanged_evaluation_writes_nothing_until_the_heartbeat():
    status = {"conditions": [READY]}
    status.update(plan_detection_status(status, rules(), OK, now=T0, generation=3) or {})
    assert plan_detection_status(status, rules(), OK, now=at(60), generation=3) is None
    assert plan_detection_status(status, rules(), OK, now=at(299), generation=3) is None
    heartbeat = plan_detection_status(status, rules(), OK, now=at(300), generation=3)
    assert heartbeat is not None and heartbeat["detection"]["lastEvaluatedAt"] == "2026-11-21T03:07:00Z"
    degraded = next(c for c in heartbeat["conditions"] if c["type"] == "DetectionDegraded")
    assert degraded["lastTransitionTime"] == "2026-11-21T03:02:00Z"  # the status did not flip


def test_degraded_and_recovered_move_the_transition_time():
    status: dict = {}
    status.update(plan_detection_status(status, rules(), OK, now=T0, generation=1) or {})
    status.update(plan_detection_status(status, rules(), DOWN, now=at(10), generation=1) or {})
    down = next(c for c in status["conditions"] if c["type"] == "DetectionDegraded")
    assert (down["status"], down["reason"], down["lastTransitionTime"]) == ("True", DOWN[1], "2026-11-21T03:02:10Z")
    assert plan_detection_status(status, rules(), DOWN, now=at(20), generation=1) is None  # same error: no write
    status.update(plan_detection_status(status, rules(), OK, now=at(30), generation=1) or {})
    up = next(c for c in status["conditions"] if c["type"] == "DetectionDegraded")
    assert (up["status"], up["lastTransitionTime"]) == ("False", "2026-11-21T03:02:30Z")


def test_a_rule_state_change_is_written_at_once():
    status: dict = {}
    status.update(plan_detection_status(status, rules(), OK, now=T0, generation=1) or {})
    patch = plan_detection_status(status, rules("Firing"), OK, now=at(2), generation=1)
    assert patch is not None and patch["detection"]["rules"][0]["state"] == "Firing"


def test_an_agent_without_rules_loses_its_detection_status_and_condition():
    status: dict = {"conditions": [READY]}
    status.update(plan_detection_status(status, rules(), DOWN, now=T0, generation=1) or {})
    patch = plan_detection_status(status, None, None, now=at(1), generation=2)
    assert patch == {"detection": None, "conditions": [READY]}
    assert plan_detection_status({"conditions": [READY]}, None, None, now=at(1), generation=2) is None


def signal(**overrides) -> Signal:
    fields = {
        "namespace": "support",
        "agent": "refund-agent",
        "name": "retry-storm",
        "source": "prometheus",
        "severity": Severity.SEV2,
        "incident_class": IncidentClass.TOOL_MISUSE,
        "summary": "Rule retry-storm fired",
        "started_at": T0,
    }
    return Signal(**{**fields, **overrides})


def test_the_fingerprint_is_namespace_agent_and_rule():
    assert signal().fingerprint == signal(started_at=at(999), severity=Severity.SEV1).fingerprint
    assert signal().fingerprint != signal(namespace="other").fingerprint
    assert signal().fingerprint != signal(agent="pricing-agent").fingerprint
    assert signal().fingerprint != signal(name="loop").fingerprint
    assert re.fullmatch(r"[0-9a-f]{32}", signal().fingerprint)  # a valid label value


def test_incident_names_are_deterministic_per_episode():
    name = detection.incident_name(signal())
    assert name == detection.incident_name(signal(summary="other words"))  # the same episode
    assert name != detection.incident_name(signal(started_at=at(1)))  # a new episode
    assert re.fullmatch(r"refund-agent-retry-storm-[0-9a-f]{10}", name)
    alert = detection.incident_name(signal(name="HighErrorRate_v2", source="alertmanager"))
    assert alert.startswith("refund-agent-high-error-rate-v2-")
    long = detection.incident_name(signal(agent="a" * 250))
    assert len(long) <= 253 and re.match(DNS_SUBDOMAIN, long)


def test_the_incident_body_is_a_valid_incident_with_the_window_at_the_signal_start():
    body = detection.build_incident(signal(summary="x" * 5000))
    spec = AgentIncidentSpec.model_validate(body["spec"])
    assert spec.agents == ["refund-agent"] and spec.severity == Severity.SEV2
    assert spec.incident_class == IncidentClass.TOOL_MISUSE
    assert spec.window is not None and spec.window.start == "2026-11-21T03:02:00Z"
    assert spec.contain is None  # the agent's severity playbook applies
    assert len(spec.summary) == 1024
    assert body["metadata"]["labels"]["tourniquet.dev/fingerprint"] == signal().fingerprint
    assert body["metadata"]["annotations"]["tourniquet.dev/signal"] == "support/refund-agent/retry-storm"


def test_a_repeat_counts_and_keeps_the_first_sighting():
    first = detection.first_detection(signal(), at(3))
    assert first["timings"] == {"detectedSeconds": 3.0}
    incident = {"status": first}
    repeated = detection.repeated_detection(incident, signal(), at(10))
    assert repeated["count"] == 2 and repeated["firstSeen"] == first["detection"]["firstSeen"]
    assert repeated["lastSeen"] == "2026-11-21T03:02:10.000000Z" and repeated["clearedAt"] is None
    cleared = detection.cleared_detection({"status": {"detection": repeated}}, at(20))
    assert cleared == {"clearedAt": "2026-11-21T03:02:20.000000Z"}
    assert detection.cleared_detection({"status": {"detection": {**repeated, **cleared}}}, at(30)) is None


def alert(**overrides) -> dict:
    labels = {"alertname": "HighRefundRate", "agent": "refund-agent", "namespace": "support", "severity": "SEV1"}
    return {
        "status": "firing",
        "labels": {**labels, **overrides.pop("labels", {})},
        "annotations": {"summary": "refunds at 10x"},
        "startsAt": "2026-11-21T03:02:00.123456789Z",
        "endsAt": "0001-01-01T00:00:00Z",
        **overrides,
    }


def test_an_alert_becomes_a_signal():
    notification = detection.parse_notification({"version": "4", "alerts": [alert()]}, T0)
    (parsed,) = notification.alerts
    made = parsed.signal("support")
    assert (made.agent, made.name, made.source, made.severity) == (
        "refund-agent",
        "HighRefundRate",
        "alertmanager",
        Severity.SEV1,
    )
    assert made.summary == "Alert HighRefundRate on refund-agent: refunds at 10x"
    assert made.started_at == datetime(2026, 11, 21, 3, 2, 0, 123456, tzinfo=UTC)
    assert parsed.ends_at is None and parsed.firing


@pytest.mark.parametrize(
    ("labels", "severity", "incident_class"),
    [
        ({"severity": "critical"}, Severity.SEV1, IncidentClass.OTHER),
        ({"severity": "warning", "class": "cost-runaway"}, Severity.SEV2, IncidentClass.COST_RUNAWAY),
        ({"severity": "sev3"}, Severity.SEV3, IncidentClass.OTHER),
        ({"severity": ""}, Severity.SEV2, IncidentClass.OTHER),
    ],
)
def test_alert_severity_and_class(labels, severity, incident_class):
    (parsed,) = detection.parse_notification({"alerts": [alert(labels=labels)]}, T0).alerts
    assert (parsed.severity, parsed.incident_class) == (severity, incident_class)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (alert(labels={"agent": ""}), "no agent label (the AgentDeployment's name)"),
        (alert(labels={"alertname": ""}), "no alertname label"),
        (alert(labels={"agent": "Refund_Agent"}), "agent label 'Refund_Agent' is not a valid AgentDeployment name"),
        (alert(labels={"namespace": "Support!"}), "namespace label 'Support!' is not a valid namespace name"),
        (alert(labels={"severity": "urgent"}), "severity 'urgent' is not SEV1, SEV2 or SEV3"),
        (alert(labels={"class": "oops"}), "class 'oops' is not one of intent-misclassification"),
        (alert(status="pending"), "status 'pending' is neither firing nor resolved"),
        ("alert", "not an object"),
    ],
)
def test_unusable_alerts_are_refused_one_by_one(raw, reason: str):
    notification = detection.parse_notification({"alerts": [alert(), raw]}, T0)
    assert len(notification.alerts) == 1
    (refusal,) = notification.refused
    assert refusal.index == 1 and reason in refusal.reason


def test_a_resolved_alert_carries_its_end():
    raw = alert(status="resolved", endsAt="2026-11-21T03:30:00Z", labels={"namespace": None})
    raw["labels"].pop("namespace")
    (parsed,) = detection.parse_notification({"alerts": [raw]}, T0).alerts
    assert not parsed.firing and parsed.ends_at == datetime(2026, 11, 21, 3, 30, tzinfo=UTC)
    assert parsed.namespace is None  # looked up by the agent's name


@pytest.mark.parametrize(
    ("payload", "words"),
    [([], "not a JSON object"), ({"alerts": "x"}, "has no 'alerts' list"), ({}, "has no 'alerts' list")],
)
def test_a_body_that_is_not_a_notification_is_refused(payload, words: str):
    with pytest.raises(detection.PayloadError, match=words):
        detection.parse_notification(payload, T0)


@pytest.mark.parametrize(
    ("namespace", "served", "watched"),
    [
        ("support", None, True),  # --all-namespaces
        ("support", (), True),
        ("support", ("support", "billing"), True),
        ("elsewhere", ("support", "billing"), False),
        ("team-a", ("team-*",), True),
        ("team-a-pr-7", ("team-*, !*-pr-*",), False),
        ("team-a-pr-123", ("team-*, !*-pr-*, *pr-123",), True),  # matched again: the first glob matched it
        ("other-pr-123", ("team-*, !*-pr-*, *pr-123",), False),  # never matched by the first glob
        ("kube-system", ("!kube-*",), False),  # a leading exclusion implies *
        ("support", ("!kube-*",), True),
    ],
)
def test_the_namespaces_an_operator_watches_follow_its_namespace_patterns(namespace, served, watched):
    assert detection.namespace_served(namespace, served) is watched


def matrix(agent: str, *seconds: int) -> dict:
    return {"metric": {"agent": agent}, "values": [[at(s).timestamp(), "1"] for s in seconds]}


@pytest.mark.parametrize(
    ("result", "crossed"),
    [
        ([matrix("refund-agent", 3, 4, 5)], 3),
        ([matrix("refund-agent", 0, 1, 4, 5)], 4),  # an earlier blip is another episode
        ([matrix("refund-agent", 3, 5), matrix("refund-agent", 4)], 3),  # series together cover the run
        ([matrix("other-agent", 0, 1, 2), matrix("refund-agent", 2)], 2),  # another agent's samples do not count
        ([], None),
        ([matrix("other-agent", 1)], None),
        ([{"metric": {}, "value": [0, "1"]}], None),  # an instant vector is not a range query's answer
    ],
)
def test_the_threshold_crossing_is_the_start_of_the_run_of_samples_that_reaches_now(result, crossed):
    assert detection.first_crossing(result, "refund-agent") == (None if crossed is None else at(crossed))


def test_the_crossing_is_searched_since_the_rule_was_last_seen_inactive():
    assert detection.crossing_window(at(12.7), at(2.5), 15) == (at(2), at(12))
    assert detection.crossing_window(at(12.7), None, 15) == (at(12 - 300), at(12))
    assert detection.crossing_window(at(12.7), None, 600) == (at(12 - 1200), at(12))  # two intervals
    assert detection.crossing_window(at(12.7), at(12.2), 15) == (at(11), at(12))  # at least one step
    assert detection.crossing_window(at(20000), at(0), 15) == (at(20000 - 10800), at(20000))  # at most 3 h
