"""Conditions: set one without losing its lastTransitionTime unless its status flips."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tourniquet.models.common import Condition


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def find_condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    *,
    now: datetime,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """Return a new list with `type_` set; its lastTransitionTime moves only when the status flips."""
    status_text = status if isinstance(status, str) else ("True" if status else "False")
    previous = find_condition(conditions, type_)
    if previous is not None and previous.get("status") == status_text and previous.get("lastTransitionTime"):
        transition = previous["lastTransitionTime"]
    else:
        transition = rfc3339(now)
    entry = Condition(
        type=type_,
        status=status_text,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=generation,
    )
    result = [c for c in conditions if c.get("type") != type_]
    result.append(entry.to_api())
    return sorted(result, key=lambda c: str(c.get("type")))


def condition_is(conditions: list[dict[str, Any]], type_: str, status: str = "True") -> bool:
    found = find_condition(conditions, type_)
    return found is not None and found.get("status") == status
