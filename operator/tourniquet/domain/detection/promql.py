"""Detection's PromQL: the standard agent metrics, durations, selectors and quoting, and the query results
read back (instant vectors as samples, when a condition first held)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

# The standard agent metrics (tourniquet.runtime.metrics); a test holds these names to the runtime's.
TOOL_CALLS = "tourniquet_agent_tool_calls_total"


TASK_FAILURES = "tourniquet_agent_task_failures_total"


TOKENS = "tourniquet_agent_tokens_total"


COST = "tourniquet_agent_cost_dollars_total"


POLICY_DENIALS = "tourniquet_agent_policy_denials_total"


CONTEXT_TOKENS = "tourniquet_agent_context_tokens"


REPEATED_CALLS = "tourniquet_agent_repeated_tool_calls_total"


SESSIONS = "tourniquet_agent_sessions_total"


_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d|w|y)")


_DURATION = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$")


_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_duration(text: str) -> float:
    """A Prometheus duration ('90s', '5m', '1h30m') in seconds; ValueError with a usable message otherwise."""
    if not isinstance(text, str) or not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a duration such as 30s, 5m or 1h30m")
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def promql_string(value: str) -> str:
    """A PromQL double-quoted string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def selector(metric: str, agent: str, **labels: str | None) -> str:
    """``metric{agent="<agent>",label="value"}``; labels given as None are left out."""
    matchers = [f"agent={promql_string(agent)}"]
    matchers += [f"{k}={promql_string(v)}" for k, v in labels.items() if v is not None]
    return f"{metric}{{{','.join(matchers)}}}"


def events_within(series: str, window: str) -> str:
    """How many events an event counter counted within `window`, new series included (see the module doc)."""
    return f"({series} unless {series} offset {window}) or increase({series}[{window}])"


def number(value: float) -> str:
    """A number as PromQL and people write it: 3, not 3.0."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class ResultShapeError(ValueError):
    """A query answered with something other than an instant vector."""


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


def samples_for_agent(result: Any, agent: str) -> list[Sample]:
    """The instant-vector samples that belong to `agent` (those labelled with another agent are ignored)."""
    if not isinstance(result, list):
        raise ResultShapeError(f"the expression returned {type(result).__name__}; a rule needs an instant vector")
    if len(result) == 2 and not isinstance(result[0], dict):
        raise ResultShapeError("the expression returns a scalar; a rule needs an instant vector (any series fires)")
    samples = []
    for item in result:
        if not isinstance(item, dict) or "value" not in item:
            kind = "a range vector" if isinstance(item, dict) and "values" in item else repr(item)[:80]
            raise ResultShapeError(f"the expression returned {kind}; a rule needs an instant vector")
        labels = {str(k): str(v) for k, v in (item.get("metric") or {}).items()}
        if labels.get("agent", agent) != agent:
            continue
        try:
            value = float(item["value"][1])
        except (TypeError, ValueError, IndexError):
            value = math.nan
        samples.append(Sample(labels, value))
    return samples


CROSSING_STEP_SECONDS = 1


CROSSING_LOOKBACK_SECONDS = 300.0


CROSSING_MAX_LOOKBACK_SECONDS = 10800.0  # 3 h of 1 s steps: within Prometheus's 11,000 points per series


def crossing_window(now: datetime, inactive_at: datetime | None, interval: float) -> tuple[datetime, datetime]:
    """Where to look for a new episode's threshold crossing (whole seconds): since this operator last saw the
    rule inactive, else the last max(5 minutes, two intervals); never more than 3 hours."""
    end = now.replace(microsecond=0)
    lookback = max(CROSSING_LOOKBACK_SECONDS, 2 * interval)
    start = inactive_at.replace(microsecond=0) if inactive_at is not None else end - timedelta(seconds=lookback)
    earliest = end - timedelta(seconds=CROSSING_MAX_LOOKBACK_SECONDS)
    latest = end - timedelta(seconds=CROSSING_STEP_SECONDS)
    return min(max(start, earliest), latest), end


def first_crossing(result: Any, agent: str) -> datetime | None:
    """When a rule's expression began returning samples for `agent`, from a range query of it with 1 s steps:
    the first step of the run of steps with samples that ends at the latest one. None when no step has any
    (or the answer is not a matrix); the window's first step when the run reaches back to it."""
    if not isinstance(result, list):
        return None
    steps: set[int] = set()
    for series in result:
        if not isinstance(series, dict) or not isinstance(series.get("values"), list):
            return None
        if str((series.get("metric") or {}).get("agent", agent)) != agent:
            continue
        for point in series["values"]:
            try:
                steps.add(int(float(point[0])))
            except (TypeError, ValueError, IndexError):
                return None
    if not steps:
        return None
    first = max(steps)
    while first - CROSSING_STEP_SECONDS in steps:
        first -= CROSSING_STEP_SECONDS
    return datetime.fromtimestamp(first, UTC)


def describe_samples(samples: list[Sample], limit: int = 3) -> str:
    """'task=refund_request: 3, task=lookup: 4' — the labels that tell the samples apart, and their values."""
    varying = sorted({k for s in samples for k, v in s.labels.items() if k not in ("agent", "__name__")})
    parts = []
    for sample in samples[:limit]:
        labels = ",".join(f"{k}={sample.labels[k]}" for k in varying if k in sample.labels)
        value = number(sample.value) if math.isfinite(sample.value) else "NaN"
        parts.append(f"{labels}: {value}" if labels else value)
    more = f" and {len(samples) - limit} more" if len(samples) > limit else ""
    return ", ".join(parts) + more
