"""Drills (pure): schedules, when a run starts, and the verdict from what was recorded."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from tests.conftest import example

from tourniquet.domain import drill
from tourniquet.domain.readiness import Ack
from tourniquet.models import AgentDeploymentSpec
from tourniquet.models.cron import next_run, parse_cron
from tourniquet.models.review import AgentDrillSpec

T0 = datetime(2026, 11, 23, 2, 59, 30, tzinfo=UTC)  # a Monday
AGENT = AgentDeploymentSpec.model_validate(example()[1]["spec"])


@pytest.mark.parametrize(
    ("schedule", "after", "expected"),
    [
        ("* * * * *", T0, datetime(2026, 11, 23, 3, 0, tzinfo=UTC)),
        ("0 3 * * 1", T0, datetime(2026, 11, 23, 3, 0, tzinfo=UTC)),  # Monday 03:00
        ("0 3 * * 1", T0 + timedelta(minutes=1), datetime(2026, 11, 30, 3, 0, tzinfo=UTC)),
        ("*/15 9-17 * * 1-5", T0, datetime(2026, 11, 23, 9, 0, tzinfo=UTC)),
        ("30 4 1 * *", T0, datetime(2026, 12, 1, 4, 30, tzinfo=UTC)),
        ("0 0 * * 0", T0, datetime(2026, 11, 29, 0, 0, tzinfo=UTC)),  # Sunday
        ("0 0 * * 7", T0, datetime(2026, 11, 29, 0, 0, tzinfo=UTC)),  # 7 is Sunday too
        ("0 0 13 * 5", T0, datetime(2026, 11, 27, 0, 0, tzinfo=UTC)),  # the 13th or a Friday: cron's OR
    ],
)
def test_next_run(schedule: str, after: datetime, expected: datetime) -> None:
    assert next_run(schedule, after) == expected


@pytest.mark.parametrize(
    ("schedule", "problem"),
    [("0 3 * *", "five fields"), ("61 * * * *", "minute '61' is outside 0-59"), ("a * * * *", "not a number")],
)
def test_a_bad_schedule_says_what_is_wrong(schedule: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_cron(schedule)
    with pytest.raises(ValueError):
        AgentDrillSpec.model_validate({"agent": "a", "schedule": schedule})


def spec(**fields: object) -> AgentDrillSpec:
    return AgentDrillSpec.model_validate({"agent": "refund-agent", **fields})


@pytest.mark.parametrize(
    ("fields", "status", "now", "kind"),
    [
        ({}, {}, T0, "start"),  # a one-off drill runs at once
        ({}, {"runs": 1, "lastRun": {"result": "Passed"}}, T0, "done"),
        ({}, {"runs": 1, "lastRun": {"result": "Running"}}, T0, "resume"),  # the operator restarted mid-run
        ({"schedule": "0 3 * * 1"}, {}, T0, "wait"),
        ({"schedule": "0 3 * * 1"}, {}, T0 + timedelta(seconds=30), "start"),
        ({"schedule": "0 3 * * 1", "suspend": True}, {}, T0 + timedelta(days=1), "wait"),
        (
            {"schedule": "0 3 * * 1"},
            {"lastRun": {"startedAt": "2026-11-23T03:00:00Z"}},
            T0 + timedelta(hours=1),
            "wait",
        ),
    ],
)
def test_plan_drill(fields, status, now, kind) -> None:
    assert drill.plan_drill(spec(**fields), status, T0, now).kind == kind


def test_the_default_levers_never_drain() -> None:
    assert [lever.value for lever in spec().levers] == ["shadow", "revokeTools"]


def incident(contained: float | None, levers: dict[str, float]) -> dict:
    timings: dict = {"levers": {f"refund-agent/{k}": v for k, v in levers.items()}}
    if contained is not None:
        timings["containedSeconds"] = contained
    return {
        "metadata": {"name": "d-1", "creationTimestamp": "2026-11-23T03:00:00Z"},
        "status": {
            "timings": timings,
            "levers": [{"agent": "refund-agent", "name": k, "state": "Applied", "detail": "…"} for k in levers],
            "evidence": {"configMap": "d-1-evidence"},
        },
    }


def ack(pod: str, mode: str, revoked: tuple[str, ...], applied: float) -> Ack:
    at = datetime(2026, 11, 23, 3, 0, tzinfo=UTC) + timedelta(seconds=applied)
    return Ack(pod, mode, revoked, at, at)


EVIDENCE = {"metadata": {"name": "d-1-evidence"}, "data": {"manifest.json": json.dumps({})}}
WRITE_TOOLS = ("issue_refund", "reverse_refund")


def test_a_run_passes_when_every_lever_landed_and_every_live_pod_acknowledged() -> None:
    observed = drill.Observed(
        incident(0.4, {"shadow": 0.3, "revokeTools": 0.3}),
        [ack("p1", "shadow", WRITE_TOOLS, 1.5), ack("p2", "shadow", WRITE_TOOLS, 2.25)],
        EVIDENCE,
    )
    verdict = drill.judge(spec(), AGENT, observed)
    assert verdict.complete and verdict.missing == []
    assert verdict.run["containedSeconds"] == 0.4 and verdict.run["acknowledgedSeconds"] == 2.25
    assert drill.finish(spec(), verdict) == (
        "Passed",
        "contained in 0.4s, acknowledged by the runtime in 2.2s; evidence captured; released",
    )


@pytest.mark.parametrize(
    ("contained", "levers", "acks", "evidence", "says"),
    [
        (None, {"shadow": 0.3}, [ack("p1", "shadow", WRITE_TOOLS, 1)], EVIDENCE, "revokeTools: not observed applied"),
        (0.4, {"shadow": 0.3, "revokeTools": 0.3}, [], EVIDENCE, "shadow: not acknowledged: no agent pod reports"),
        (
            0.4,
            {"shadow": 0.3, "revokeTools": 0.3},
            [ack("p1", "shadow", WRITE_TOOLS, 1), ack("p2", "active", (), 1)],
            EVIDENCE,
            "shadow: not acknowledged by the runtime in pod(s) p2",
        ),
        (
            0.4,
            {"shadow": 0.3, "revokeTools": 0.3},
            [ack("p1", "shadow", ("issue_refund",), 1)],
            EVIDENCE,
            "revokeTools: not acknowledged by the runtime in pod(s) p1",
        ),
        (
            0.4,
            {"shadow": 0.3, "revokeTools": 0.3},
            [ack("p1", "shadow", WRITE_TOOLS, 1)],
            None,
            "evidence: not captured",
        ),
        (75.0, {"shadow": 0.3, "revokeTools": 75.0}, [ack("p1", "shadow", WRITE_TOOLS, 1)], EVIDENCE, "over the 60s"),
    ],
)
def test_a_failed_run_names_what_did_not_land(contained, levers, acks, evidence, says) -> None:
    verdict = drill.judge(spec(), AGENT, drill.Observed(incident(contained, levers), acks, evidence))
    result, message = drill.finish(spec(), verdict)
    assert result == "Failed" and says in message, message


def test_an_acknowledgement_from_before_the_drill_does_not_count() -> None:
    stale = ack("p1", "shadow", WRITE_TOOLS, -30)  # shadow from an earlier incident, reported again since
    stale = Ack(stale.pod, stale.mode, stale.revoked, datetime(2026, 11, 23, 3, 0, 5, tzinfo=UTC), stale.applied_at)
    verdict = drill.judge(
        spec(), AGENT, drill.Observed(incident(0.4, {"shadow": 0.3, "revokeTools": 0.3}), [stale], EVIDENCE)
    )
    assert not verdict.complete


def test_records_feed_the_readiness_checklist() -> None:
    bodies = [
        {
            "metadata": {"name": "weekly"},
            "spec": {"agent": "refund-agent"},
            "status": {
                "lastRun": {"run": 2, "result": "Running"},
                "history": [
                    {"run": 1, "result": "Passed", "finishedAt": "2026-11-16T03:00:05Z", "containedSeconds": 0.5},
                    {"run": 0, "result": "Skipped"},
                ],
            },
        },
        {"metadata": {"name": "other"}, "spec": {"agent": "pricing-agent"}, "status": {}},
    ]
    (record,) = drill.records(bodies, "refund-agent")
    assert (record.drill, record.passed, record.contained_seconds) == ("weekly", True, 0.5)


LEDGER = {"ledger": {"secretRef": {"name": "refund-ledger"}}}


@pytest.mark.parametrize(
    ("agent_spec", "given", "latest", "ok", "says"),
    [
        ({}, True, None, None, "no ledger configured (spec.ledger)"),
        (LEDGER, False, None, None, "the operator cannot read it"),
        (LEDGER, True, None, None, "no action in the last 24 h"),
        (LEDGER, True, ("k1", "issue_refund", True), True, "decision trace of the latest action read"),
        (LEDGER, True, ("k1", "issue_refund", False), False, "(issue_refund, k1) has no decision trace"),
        (LEDGER, True, "database is locked", False, "the ledger could not be read: database is locked"),
    ],
)
def test_the_trace_check(agent_spec, given, latest, ok, says) -> None:
    result, detail = drill.trace_check(agent_spec, given, latest)
    assert result is ok and says in detail, detail


def test_a_trace_that_cannot_be_produced_fails_the_run_and_one_not_checked_does_not() -> None:
    landed = incident(0.4, {"shadow": 0.3, "revokeTools": 0.3}), [ack("p1", "shadow", WRITE_TOOLS, 1)], EVIDENCE
    failing = drill.Observed(*landed, trace=drill.trace_check(LEDGER, True, ("k1", "issue_refund", False)))
    result, message = drill.finish(spec(), drill.judge(spec(), AGENT, failing))
    assert result == "Failed" and "trace: the latest action (issue_refund, k1) has no decision trace" in message
    unchecked = drill.Observed(*landed, trace=drill.trace_check({}, True))
    assert drill.finish(spec(), drill.judge(spec(), AGENT, unchecked))[0] == "Passed"
