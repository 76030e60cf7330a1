"""Watch freshness bookkeeping (pure): settings, the canary's round trip, when the watch is stale."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tourniquet.freshness import (
    FreshnessSettings,
    WatchFreshness,
    canary_body,
    canary_token,
    canary_token_of,
    is_canary,
)
from tourniquet.models import AgentIncidentSpec


@pytest.mark.parametrize(
    ("environ", "served", "namespaces", "off"),
    [
        ({"POD_NAMESPACE": "tourniquet-system"}, None, ("tourniquet-system",), ""),
        ({"POD_NAMESPACE": "tourniquet-system"}, ["payments", "support"], ("payments", "support"), ""),
        ({"TOURNIQUET_CANARY_NAMESPACE": "ops,payments", "POD_NAMESPACE": "x"}, ["a"], ("ops", "payments"), ""),
        ({"POD_NAMESPACE": "x"}, ["team-*"], (), "patterns"),
        ({"POD_NAMESPACE": "x", "TOURNIQUET_CANARY_SECONDS": "0"}, None, (), "TOURNIQUET_CANARY_SECONDS=0"),
        ({}, None, (), "set POD_NAMESPACE or TOURNIQUET_CANARY_NAMESPACE"),
    ],
)
def test_where_the_canaries_live(environ, served, namespaces, off) -> None:
    settings = FreshnessSettings.from_env(environ, served)
    assert settings.namespaces == namespaces
    assert off in settings.off_reason


def test_settings_default_and_refuse_nonsense() -> None:
    settings = FreshnessSettings.from_env({"POD_NAMESPACE": "ns"})
    assert (settings.interval_seconds, settings.stale_seconds) == (30, 90)
    assert FreshnessSettings.from_env({"POD_NAMESPACE": "ns", "TOURNIQUET_CANARY_SECONDS": "5"}).stale_seconds == 15
    for bad in ({"TOURNIQUET_CANARY_SECONDS": "soon"}, {"TOURNIQUET_CANARY_STALE_SECONDS": "-1"}):
        with pytest.raises(ValueError, match="TOURNIQUET_CANARY"):
            FreshnessSettings.from_env(bad)
    with pytest.raises(ValueError, match="more than 0"):
        FreshnessSettings.from_env({"TOURNIQUET_CANARY_STALE_SECONDS": "0"})


def test_the_canary_is_a_valid_resolved_incident_that_says_what_it_is() -> None:
    body = canary_body("ops", 30)
    spec = AgentIncidentSpec.model_validate(body["spec"])
    assert spec.resolved and is_canary(body)
    assert "Not an incident" in spec.summary and "every 30s" in spec.summary


def test_tokens_sort_by_time() -> None:
    early = datetime(2026, 9, 1, 12, 0, 0, 5, tzinfo=UTC)
    tokens = [canary_token(early + timedelta(seconds=s)) for s in (0, 0.5, 9, 10, 3600)]
    assert tokens == sorted(tokens) and len(set(tokens)) == 5
    assert canary_token_of({"metadata": {"annotations": {"tourniquet.dev/canary-written": tokens[0]}}}) == tokens[0]


def state(stale: float = 10, interval: float = 3) -> WatchFreshness:
    return WatchFreshness(FreshnessSettings(interval, stale, ("ops",)), started_at=100.0)


def verdict(s: WatchFreshness, now: float):
    (only,) = s.verdicts(now)
    return only


def test_a_canary_that_comes_back_is_a_fresh_round_trip() -> None:
    s = state()
    assert not verdict(s, 101).stale and verdict(s, 101).message == "waiting for the first canary"
    s.canary_written("ops", "t1", 101.0)
    assert s.canary_seen("ops", "t1", 101.25) == pytest.approx(0.25)
    assert not verdict(s, 102).stale and verdict(s, 102).lag == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("events", "now", "stale", "words"),
    [
        # (what happened: (kind, token, at)), when asked, stale?, in the message
        ([("write", "t1", 101)], 105, False, "written 4.0s ago is not back yet"),  # within the 10 s threshold
        ([("write", "t1", 101)], 111.5, True, "written 10s ago has not come back"),
        ([("write", "t1", 101), ("seen", "t1", 101.1), ("write", "t2", 104)], 113, False, "round trip 0.100s"),
        ([("write", "t1", 101), ("seen", "t1", 101.1), ("write", "t2", 104)], 114.5, True, "has not come back"),
        # An older token (a previous process's, in the initial listing) answers nothing.
        ([("write", "t5", 101), ("seen", "t4", 101.1)], 111.5, True, "has not come back"),
        # A newer token answers the pending write (two writes batched into one event; another replica's).
        ([("write", "t5", 101), ("write", "t6", 104), ("seen", "t6", 104.2)], 111.5, False, "round trip 3.200s"),
        # Writes that fail: nothing pending, but nothing came back since start-up either.
        ([("fail", "t1", 101)], 112, False, "waiting"),
        ([("fail", "t1", 101)], 114, True, "no canary has come back for 14s: writing it failed"),
    ],
)
def test_when_the_watch_is_stale(events, now, stale, words) -> None:
    s = state()
    for kind, token, at in events:
        if kind == "write":
            s.canary_written("ops", token, at)
        elif kind == "seen":
            s.canary_seen("ops", token, at)
        else:
            s.canary_written("ops", token, at)
            s.canary_failed("ops", token, "writing it failed: 503 ServiceUnavailable")
    result = verdict(s, now)
    assert (result.stale, words in result.message) == (stale, True), result


def test_the_lag_grows_while_a_canary_is_out() -> None:
    s = state()
    s.canary_written("ops", "t1", 101)
    s.canary_seen("ops", "t1", 101.5)
    s.canary_written("ops", "t2", 104)
    assert verdict(s, 104.2).lag == pytest.approx(0.5)  # the last round trip is the larger
    assert verdict(s, 110).lag == pytest.approx(6)  # the one out for 6 s


def test_the_report_and_the_event_ages() -> None:
    s = state()
    s.event_seen("agentincidents", 150)
    report = s.report(160)
    assert report["status"] == "stale"  # nothing came back in 60 s
    assert report["lastEventAgeSeconds"] == {"agentdeployments": 60.0, "agentincidents": 10.0}
    off = WatchFreshness(FreshnessSettings(30, 90, (), "TOURNIQUET_CANARY_SECONDS=0"), started_at=0).report(5)
    assert off["status"] == "off" and off["canaryOff"] == "TOURNIQUET_CANARY_SECONDS=0"
