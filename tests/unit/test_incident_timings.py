"""An incident's timings start where it was really opened, and say where that is."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tourniquet.domain.incident import plan_start

CREATED = "2026-11-21T03:12:07Z"  # the API server's creationTimestamp: whole seconds


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@pytest.mark.parametrize(
    ("opened_at", "first_seen", "expected"),
    [
        # tourniquet contain wrote it just before creating the incident: 0.8 s into the creation's second.
        ("2026-11-21T03:12:07.800000Z", "2026-11-21T03:12:07.850000Z", ("2026-11-21T03:12:07.800000Z", "openedAt")),
        # ... or just before the second turned (the request reached the API server in the next one).
        ("2026-11-21T03:12:06.990000Z", "2026-11-21T03:12:07.050000Z", ("2026-11-21T03:12:06.990000Z", "openedAt")),
        # Applied by hand: no annotation; timed from the operator's first sight of it.
        (None, "2026-11-21T03:12:07.400000Z", ("2026-11-21T03:12:07.400000Z", "firstSeen")),
        # An annotation copied from an older incident's YAML is not this incident's opening.
        ("2026-11-20T22:00:00.000000Z", "2026-11-21T03:12:07.400000Z", ("2026-11-21T03:12:07.400000Z", "firstSeen")),
        # Later than the creation's second, or than the operator saw it: a clock ahead, not a start.
        ("2026-11-21T03:12:08.500000Z", "2026-11-21T03:12:08.600000Z", ("2026-11-21T03:12:08.600000Z", "firstSeen")),
        ("2026-11-21T03:12:07.900000Z", "2026-11-21T03:12:07.800000Z", ("2026-11-21T03:12:07.800000Z", "firstSeen")),
        # Seen a minute after its creation (the operator was down): the wait is not hidden.
        (None, "2026-11-21T03:13:07.000000Z", ("2026-11-21T03:12:07.000000Z", "creationTimestamp")),
        # A valid annotation still wins then: it is the precise start.
        ("2026-11-21T03:12:07.300000Z", "2026-11-21T03:13:07.000000Z", ("2026-11-21T03:12:07.300000Z", "openedAt")),
    ],
)
def test_the_start_is_the_opened_at_annotation_else_the_first_sight_else_the_creation(opened_at, first_seen, expected):
    assert plan_start({}, opened_at=opened_at, created=CREATED, first_seen=at(first_seen)) == expected


def test_the_start_decided_on_the_first_pass_is_kept():
    recorded = {"startedAt": "2026-11-21T03:12:07.400000Z", "startedFrom": "firstSeen", "containedSeconds": 0.2}
    later = at("2026-11-21T03:20:00Z")
    assert plan_start(recorded, opened_at=None, created=CREATED, first_seen=later) == (
        "2026-11-21T03:12:07.400000Z",
        "firstSeen",
    )
