"""Cron schedules (5 fields, UTC), as a CronJob writes them: minute hour day-of-month month day-of-week.

Each field is `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a comma-separated list of those. Day of
week 0-7 (0 and 7 are Sunday). As in cron, when both day fields are restricted a day matches either.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool


def _field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if body == "*":
                start, end = low, high
            elif "-" in body:
                first, _, last = body.partition("-")
                start, end = int(first), int(last)
            else:
                start = end = int(body)
                if step_text:
                    end = high
        except ValueError:
            raise ValueError(f"schedule: {name} {part!r} is not a number, range or step") from None
        if step < 1 or not low <= start <= end <= high:
            raise ValueError(f"schedule: {name} {part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


def parse_cron(schedule: str) -> Cron:
    parts = schedule.split()
    if len(parts) != 5:
        raise ValueError(
            f"schedule {schedule!r}: five fields (minute hour day-of-month month day-of-week), e.g. '0 3 * * 1'"
        )
    parsed = [_field(text, *spec) for text, spec in zip(parts, _FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in parsed[4])
    return Cron(parsed[0], parsed[1], parsed[2], parsed[3], weekdays, parts[2] == "*", parts[4] == "*")


def _day_matches(cron: Cron, day: datetime) -> bool:
    if day.month not in cron.months:
        return False
    by_date = day.day in cron.days
    by_weekday = (day.isoweekday() % 7) in cron.weekdays
    if cron.any_day and cron.any_weekday:
        return True
    if cron.any_day:
        return by_weekday
    if cron.any_weekday:
        return by_date
    return by_date or by_weekday


def next_run(schedule: str, after: datetime) -> datetime:
    """The first time strictly after `after` (to the minute) that the schedule names."""
    cron = parse_cron(schedule)
    start = after.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    day = start.replace(hour=0, minute=0)
    for _ in range(366 * 5):
        if _day_matches(cron, day):
            for hour in sorted(cron.hours):
                for minute in sorted(cron.minutes):
                    moment = day.replace(hour=hour, minute=minute)
                    if moment >= start:
                        return moment
        day += timedelta(days=1)
    raise ValueError(f"schedule {schedule!r} names no time in the next five years")
