"""Detection, the pure part: rules compiled to PromQL, pending → firing verdicts, fingerprints and incident
names, the agent's detection status, and Alertmanager alerts read into signals.

A rule is raw PromQL (`expr`, any sample returned fires) or a built-in template with parameters. Templates
are written against the standard agent metrics of :mod:`tourniquet.runtime.metrics` and select one agent
with ``agent="<name>"``. Every compiled expression is shown in the agent's status, ready to paste into
Grafana.

Event counters whose label values appear only when the first event happens (a task's failures, a tool's
denials) are counted as ``(S unless S offset W) or increase(S[W])``: ``increase()`` alone cannot see a
series born within the window (its first sample is its baseline), so a series that did not exist ``W`` ago
counts whole, and an older one counts its increase (which survives a counter reset).

A signal (a firing rule, or an Alertmanager alert) is identified by its fingerprint: namespace + agent +
rule name. While an incident with that fingerprint is open, a repeat updates it; otherwise a new incident
is created under a name derived from the fingerprint and the time the signal started, so a repeat of the
same episode (after an operator restart, say) hits 409 AlreadyExists instead of opening a second one.
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from tourniquet.domain import names
from tourniquet.domain.conditions import find_condition, parse_time, rfc3339, set_condition
from tourniquet.domain.errors import describe_validation_error
from tourniquet.models import Severity
from tourniquet.models.agentdeployment import DetectionRule, DetectionTemplate
from tourniquet.models.agentincident import IncidentClass
from tourniquet.models.common import DNS_LABEL, DNS_SUBDOMAIN

# The standard agent metrics (tourniquet.runtime.metrics); a test holds these names to the runtime's.
TOOL_CALLS = "tourniquet_agent_tool_calls_total"
TASK_FAILURES = "tourniquet_agent_task_failures_total"
TOKENS = "tourniquet_agent_tokens_total"
COST = "tourniquet_agent_cost_dollars_total"
POLICY_DENIALS = "tourniquet_agent_policy_denials_total"
CONTEXT_TOKENS = "tourniquet_agent_context_tokens"
REPEATED_CALLS = "tourniquet_agent_repeated_tool_calls_total"
SESSIONS = "tourniquet_agent_sessions_total"

CONDITION_DEGRADED = "DetectionDegraded"
SOURCE_PROMETHEUS = "prometheus"
SOURCE_ALERTMANAGER = "alertmanager"

LABEL_FINGERPRINT = f"{names.PREFIX}/fingerprint"
LABEL_RULE = f"{names.PREFIX}/rule"
LABEL_SOURCE = f"{names.PREFIX}/source"
ANNOTATION_SIGNAL = f"{names.PREFIX}/signal"  # namespace/agent/rule, readable (the label is its hash)

SUMMARY_LIMIT = 1024


# ---------------------------------------------------------------- durations


_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d|w|y)")
_DURATION = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_duration(text: str) -> float:
    """A Prometheus duration ('90s', '5m', '1h30m') in seconds; ValueError with a usable message otherwise."""
    if not isinstance(text, str) or not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a duration such as 30s, 5m or 1h30m")
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


# ---------------------------------------------------------------- PromQL building blocks


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


# ---------------------------------------------------------------- template parameters


class ParamKind(str, enum.Enum):
    COUNT = "count"  # a whole number >= minimum
    AMOUNT = "amount"  # a number > 0
    FACTOR = "factor"  # a number > 1
    DURATION = "duration"  # a Prometheus duration > 0
    LABEL = "label"  # a label value to select on


@dataclass(frozen=True)
class Param:
    kind: ParamKind
    default: Any = None  # None: optional, absent unless given
    minimum: int = 1
    help: str = ""


def _check_param(name: str, spec: Param, value: Any) -> Any:
    """The parameter's value, normalised; ValueError naming the parameter and what it expects."""
    if spec.kind == ParamKind.COUNT:
        whole = _whole_number(value)
        if whole is None or whole < spec.minimum:
            raise ValueError(f"parameter {name} must be a whole number >= {spec.minimum}, not {value!r}")
        return whole
    if spec.kind in (ParamKind.AMOUNT, ParamKind.FACTOR):
        amount = _number(value)
        floor = 0 if spec.kind == ParamKind.AMOUNT else 1
        if amount is None or amount <= floor:
            raise ValueError(f"parameter {name} must be a number > {floor}, not {value!r}")
        return amount
    if spec.kind == ParamKind.DURATION:
        try:
            seconds = parse_duration(value)
        except ValueError as error:
            raise ValueError(f"parameter {name}: {error}") from None
        if seconds <= 0:
            raise ValueError(f"parameter {name} must be longer than 0s, not {value!r}")
        return value
    if not isinstance(value, str) or not value:
        raise ValueError(f"parameter {name} must be a non-empty string, not {value!r}")
    return value


def _whole_number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return result if math.isfinite(result) else None


# ---------------------------------------------------------------- the built-in templates


Built = tuple[str, str]  # (PromQL, what it means in words)


def _retry_storm(agent: str, p: dict[str, Any]) -> Built:
    failures = selector(TASK_FAILURES, agent, task=p.get("task"))
    expr = f"sum by (agent, task) ({events_within(failures, p['window'])}) >= {p['threshold']}"
    return expr, f"{p['threshold']} or more failures of one task within {p['window']}"


def _loop(agent: str, p: dict[str, Any]) -> Built:
    repeats = selector(REPEATED_CALLS, agent, tool=p.get("tool"))
    expr = f"sum by (agent, tool) ({events_within(repeats, p['window'])}) > {p['maxRepeats']}"
    return expr, f"one tool call repeated identically more than {p['maxRepeats']} times within {p['window']}"


def _token_surge(agent: str, p: dict[str, Any]) -> Built:
    tokens = selector(TOKENS, agent)
    now = f"sum by (agent) (rate({tokens}[{p['window']}]))"
    baseline = f"sum by (agent) (rate({tokens}[{p['baseline']}] offset {p['window']}))"
    expr = f"{now} > {number(p['factor'])} * {baseline} and {baseline} > 0"
    return expr, (
        f"tokens per second over {p['window']} above {number(p['factor'])}x their average over the "
        f"{p['baseline']} before"
    )


def _budget_exceeded(agent: str, p: dict[str, Any]) -> Built:
    cost = selector(COST, agent)
    parts, words = [], []
    if p.get("dollarsPerHour") is not None:
        parts.append(f"sum by (agent) (increase({cost}[1h])) > {number(p['dollarsPerHour'])}")
        words.append(f"more than ${number(p['dollarsPerHour'])} spent in the last hour")
    if p.get("dollarsPerSession") is not None:
        sessions = f"sum by (agent) (increase({selector(SESSIONS, agent)}[{p['window']}]))"
        spent = f"sum by (agent) (increase({cost}[{p['window']}]))"
        parts.append(f"{spent} / {sessions} > {number(p['dollarsPerSession'])} and {sessions} > 0")
        words.append(f"more than ${number(p['dollarsPerSession'])} per session over {p['window']}")
    expr = parts[0] if len(parts) == 1 else " or ".join(f"({part})" for part in parts)
    return expr, " or ".join(words)


def _budget_check(p: dict[str, Any]) -> str | None:
    if p.get("dollarsPerHour") is None and p.get("dollarsPerSession") is None:
        return "template budgetExceeded needs dollarsPerHour, dollarsPerSession or both"
    return None


def _policy_denial(agent: str, p: dict[str, Any]) -> Built:
    denials = selector(POLICY_DENIALS, agent, tool=p.get("tool"))
    expr = f"sum by (agent, tool) ({events_within(denials, p['window'])}) > 0"
    return expr, f"a tool call refused by the agent's policy within {p['window']}"


def _context_growth(agent: str, p: dict[str, Any]) -> Built:
    context = selector(CONTEXT_TOKENS, agent)
    now, before = f"max by (agent) ({context})", f"max by (agent) ({context} offset {p['window']})"
    growth = (
        f"{now} > {number(p['growthFactor'])} * {before} and {before} > 0 and {now} >= {p['minTokens']}"
    )
    words = f"context grew more than {number(p['growthFactor'])}x within {p['window']} (to {p['minTokens']}+ tokens)"
    if p.get("maxTokens") is None:
        return growth, words
    return f"({growth}) or {now} > {p['maxTokens']}", f"{words}, or context above {p['maxTokens']} tokens"


@dataclass(frozen=True)
class Template:
    params: dict[str, Param]
    build: Callable[[str, dict[str, Any]], Built]
    severity: Severity
    incident_class: IncidentClass
    check: Callable[[dict[str, Any]], str | None] | None = None


TEMPLATES: dict[DetectionTemplate, Template] = {
    DetectionTemplate.RETRY_STORM: Template(
        {
            "threshold": Param(ParamKind.COUNT, 3, help="failures of one task"),
            "window": Param(ParamKind.DURATION, "5m"),
            "task": Param(ParamKind.LABEL, help="only this task"),
        },
        _retry_storm,
        Severity.SEV2,
        IncidentClass.TOOL_MISUSE,
    ),
    DetectionTemplate.LOOP: Template(
        {
            "maxRepeats": Param(ParamKind.COUNT, 3, minimum=0, help="identical repeats allowed"),
            "window": Param(ParamKind.DURATION, "5m"),
            "tool": Param(ParamKind.LABEL, help="only this tool"),
        },
        _loop,
        Severity.SEV2,
        IncidentClass.TOOL_MISUSE,
    ),
    DetectionTemplate.TOKEN_SURGE: Template(
        {
            "factor": Param(ParamKind.FACTOR, 5),
            "window": Param(ParamKind.DURATION, "1m", help="the recent rate"),
            "baseline": Param(ParamKind.DURATION, "10m", help="the rolling average it is compared to"),
        },
        _token_surge,
        Severity.SEV2,
        IncidentClass.COST_RUNAWAY,
    ),
    DetectionTemplate.BUDGET_EXCEEDED: Template(
        {
            "dollarsPerHour": Param(ParamKind.AMOUNT),
            "dollarsPerSession": Param(ParamKind.AMOUNT),
            "window": Param(ParamKind.DURATION, "1h", help="the window the per-session average is taken over"),
        },
        _budget_exceeded,
        Severity.SEV2,
        IncidentClass.COST_RUNAWAY,
        _budget_check,
    ),
    DetectionTemplate.POLICY_DENIAL: Template(
        {"window": Param(ParamKind.DURATION, "5m"), "tool": Param(ParamKind.LABEL, help="only this tool")},
        _policy_denial,
        Severity.SEV1,
        IncidentClass.POLICY_BYPASS,
    ),
    DetectionTemplate.CONTEXT_GROWTH: Template(
        {
            "growthFactor": Param(ParamKind.FACTOR, 4),
            "window": Param(ParamKind.DURATION, "10m"),
            "minTokens": Param(ParamKind.COUNT, 8000, minimum=0, help="no alarm below this size"),
            "maxTokens": Param(ParamKind.COUNT, help="an absolute ceiling"),
        },
        _context_growth,
        Severity.SEV3,
        IncidentClass.CONTEXT_DRIFT,
    ),
}


def template_params(template: DetectionTemplate, given: Mapping[str, Any]) -> dict[str, Any]:
    """The template's parameters with defaults filled in; ValueError naming every problem."""
    spec = TEMPLATES[template]
    problems = []
    unknown = sorted(set(given) - set(spec.params))
    if unknown:
        known = ", ".join(spec.params)
        problems += [f"unknown parameter {name!r} for template {template.value} (known: {known})" for name in unknown]
    values: dict[str, Any] = {}
    for name, param in spec.params.items():
        raw = given.get(name, param.default)
        if raw is None:
            continue
        try:
            values[name] = _check_param(name, param, raw)
        except ValueError as error:
            problems.append(str(error))
    if not problems and spec.check is not None:
        problem = spec.check(values)
        if problem:
            problems.append(problem)
    if problems:
        raise ValueError("; ".join(problems))
    return values


# ---------------------------------------------------------------- compiled rules


_AGENT_PLACEHOLDER = re.compile(r"\$agent(?![A-Za-z0-9_])")


@dataclass(frozen=True)
class CompiledRule:
    """A rule ready to evaluate, or (with `error`) one that cannot be, and why."""

    name: str
    expr: str | None
    for_seconds: float = 0.0
    severity: Severity = Severity.SEV2
    incident_class: IncidentClass = IncidentClass.OTHER
    description: str = ""
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None and self.expr is not None


def compile_rule(rule: DetectionRule, agent: str) -> CompiledRule:
    """Compile one (schema-valid) rule for `agent`; an unusable one comes back with `error` set."""
    template = TEMPLATES.get(rule.template) if rule.template is not None else None
    explicit = rule.model_fields_set
    severity = rule.severity if template is None or "severity" in explicit else template.severity
    class_text = rule.incident_class if template is None or "incident_class" in explicit else template.incident_class
    base = CompiledRule(rule.name, None, severity=severity)
    try:
        incident_class = IncidentClass(class_text)
    except ValueError:
        known = ", ".join(c.value for c in IncidentClass)
        return _invalid(base, f"class {class_text!r} is not one of {known}")
    try:
        for_seconds = parse_duration(rule.for_)
    except ValueError as error:
        return _invalid(base, f"for: {error}")
    if template is None:
        if rule.params:
            return _invalid(base, "params apply to templates only; a raw expr takes none")
        expr = _AGENT_PLACEHOLDER.sub(agent, rule.expr or "")
        description = "its expression returned samples"
    else:
        assert rule.template is not None
        try:
            values = template_params(rule.template, rule.params)
        except ValueError as error:
            return _invalid(base, str(error))
        expr, description = template.build(agent, values)
    return CompiledRule(rule.name, expr, for_seconds, severity, incident_class, description)


def _invalid(base: CompiledRule, error: str) -> CompiledRule:
    return CompiledRule(base.name, base.expr, severity=base.severity, error=error)


def compile_rules(raw_rules: list[Any], agent: str) -> list[CompiledRule]:
    """Compile every rule on its own: one bad rule is reported and never stops the others."""
    compiled: list[CompiledRule] = []
    first_use: dict[str, int] = {}
    for index, raw in enumerate(raw_rules):
        where = f"spec.detection.rules[{index}]"
        name = raw.get("name") if isinstance(raw, dict) and isinstance(raw.get("name"), str) else None
        name = name or f"rules-{index}"
        try:
            rule = DetectionRule.model_validate(raw)
        except ValidationError as error:
            compiled.append(CompiledRule(name, None, error=describe_validation_error(error, where)))
            continue
        if rule.name in first_use:
            compiled.append(
                CompiledRule(
                    f"{rule.name}-{index}",
                    None,
                    error=f"{where}: rule name {rule.name!r} is already used by rules[{first_use[rule.name]}]; "
                    "names must be unique (they identify the signal for de-duplication)",
                )
            )
            continue
        first_use[rule.name] = index
        compiled.append(compile_rule(rule, agent))
    return compiled


# ---------------------------------------------------------------- query results


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


RULE_LABEL = "tourniquet_rule"


def combined_expr(rules: list[CompiledRule]) -> str:
    """One query for several rules of an agent: each rule's samples carry its name in `tourniquet_rule`.

    One request per agent per interval instead of one per rule (the HTTP client is most of the cost). A
    rule Prometheus refuses is found by querying the rules one by one, and is queried on its own from then.
    """
    return " or ".join(f'label_replace({r.expr}, "{RULE_LABEL}", "{r.name}", "", "")' for r in rules)


def split_combined(result: Any, rules: list[CompiledRule]) -> dict[str, list[Any]]:
    """The combined query's samples, back under each rule (without the added label)."""
    if not isinstance(result, list) or any(not isinstance(item, dict) for item in result):
        raise ResultShapeError("the combined query did not return an instant vector")
    parts: dict[str, list[Any]] = {r.name: [] for r in rules}
    for item in result:
        labels = dict(item.get("metric") or {})
        name = labels.pop(RULE_LABEL, None)
        if name in parts:
            parts[name].append({**item, "metric": labels})
    return parts


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


# ---------------------------------------------------------------- verdicts


class RuleState(str, enum.Enum):
    INACTIVE = "Inactive"
    PENDING = "Pending"
    FIRING = "Firing"
    INVALID = "Invalid"


@dataclass(frozen=True)
class RuleVerdict:
    state: RuleState
    active_at: datetime | None = None
    cleared: bool = False  # it was firing and no longer is

    @property
    def firing(self) -> bool:
        return self.state == RuleState.FIRING


def new_episode(previous: RuleState, previous_active_at: datetime | None) -> bool:
    """Whether samples now start an episode (rather than continue a pending or firing one)."""
    return previous not in (RuleState.PENDING, RuleState.FIRING) or previous_active_at is None


def decide_rule(
    previous: RuleState,
    previous_active_at: datetime | None,
    active: bool,
    now: datetime,
    for_seconds: float,
    started: datetime | None = None,
) -> RuleVerdict:
    """Prometheus's alerting semantics: samples make a rule Pending, and Firing once they lasted `for`.

    `started`: when a new episode's samples began (the threshold crossing Prometheus's data show); `now`
    when unknown. Kept to whole seconds, as the agent's status keeps it: a restarted operator resumes the
    very same episode."""
    was_firing = previous == RuleState.FIRING
    if not active:
        return RuleVerdict(RuleState.INACTIVE, None, cleared=was_firing)
    if new_episode(previous, previous_active_at):
        active_at = min(started or now, now).replace(microsecond=0)
    else:
        assert previous_active_at is not None
        active_at = previous_active_at
    if (now - active_at).total_seconds() >= for_seconds:
        return RuleVerdict(RuleState.FIRING, active_at)
    return RuleVerdict(RuleState.PENDING, active_at)


def previous_rule_states(status: dict[str, Any]) -> dict[str, tuple[RuleState, datetime | None]]:
    """What the agent's status last said about each rule (so `for:` and episodes survive a restart)."""
    result = {}
    for rule in (status.get("detection") or {}).get("rules") or []:
        try:
            state = RuleState(rule.get("state"))
        except ValueError:
            state = RuleState.INACTIVE
        result[str(rule.get("name"))] = (state, parse_time(rule.get("activeAt")))
    return result


def rule_status(rule: CompiledRule, state: RuleState, active_at: datetime | None, error: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": rule.name, "state": state.value}
    if rule.expr:
        entry["expr"] = rule.expr
    if active_at is not None and state in (RuleState.PENDING, RuleState.FIRING):
        entry["activeAt"] = rfc3339(active_at)
    if error:
        entry["error"] = error
    return entry


@dataclass(frozen=True)
class Degraded:
    """Why evaluation could not happen: Prometheus unreachable, slow, failing, or not configured."""

    reason: str  # CamelCase, e.g. PrometheusUnreachable
    message: str


def degraded_condition(degraded: Degraded | None, evaluated: int, url: str | None) -> tuple[bool, str, str]:
    if degraded is not None:
        return True, degraded.reason, degraded.message
    return False, "Evaluating", f"{evaluated} rule(s) evaluated against Prometheus at {url}"


def plan_detection_status(
    status: dict[str, Any],
    rules: list[dict[str, Any]] | None,
    condition: tuple[bool, str, str] | None,
    *,
    now: datetime,
    generation: int | None,
    heartbeat_seconds: float = 300.0,
) -> dict[str, Any] | None:
    """The status merge patch that makes the agent's detection status say this, or None if it already does.

    `rules` None means the agent has no rules: its detection status and condition are removed. Other
    conditions are kept (a merge patch replaces the whole list); `lastEvaluatedAt` is refreshed with a
    change, or every `heartbeat_seconds`, not on every evaluation.
    """
    conditions = list(status.get("conditions") or [])
    previous = status.get("detection") or {}
    if rules is None or condition is None:
        if not previous and find_condition(conditions, CONDITION_DEGRADED) is None:
            return None
        return {"detection": None, "conditions": [c for c in conditions if c.get("type") != CONDITION_DEGRADED]}
    new_conditions = set_condition(conditions, CONDITION_DEGRADED, *condition, now=now, generation=generation)
    last = parse_time(previous.get("lastEvaluatedAt"))
    stale = last is None or (now - last).total_seconds() >= heartbeat_seconds
    if rules == previous.get("rules") and _same(new_conditions, conditions) and not stale:
        return None
    return {"detection": {"rules": rules, "lastEvaluatedAt": rfc3339(now)}, "conditions": new_conditions}


def _same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    def key(conditions: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        fields = ("type", "status", "reason", "message", "observedGeneration")
        return sorted(tuple(str(c.get(f)) for f in fields) for c in conditions)

    return key(a) == key(b)


# ---------------------------------------------------------------- signals and incidents


def fingerprint(namespace: str, agent: str, name: str) -> str:
    """The identity of a signal: namespace + agent + rule (or alert) name. Safe as a label value."""
    return hashlib.sha256(f"{namespace}/{agent}/{name}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Signal:
    """A rule firing, or an alert, on one agent: what opens or updates an incident."""

    namespace: str
    agent: str
    name: str  # the rule name, or the alert's alertname
    source: str  # prometheus | alertmanager
    severity: Severity
    incident_class: IncidentClass
    summary: str
    started_at: datetime  # when the signal started (rule activeAt, alert startsAt)
    start_measured: bool = True  # False: started_at is only when the operator first saw the samples

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.namespace, self.agent, self.name)

    @property
    def readable(self) -> str:
        return f"{self.namespace}/{self.agent}/{self.name}"


def slug(text: str, limit: int = 40) -> str:
    """A DNS-label-safe rendering of a rule or alert name."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", re.sub(r"([a-z0-9])([A-Z])", r"\1-\2", text).lower()).strip("-")
    return cleaned[:limit].strip("-") or "signal"


def incident_name(signal: Signal) -> str:
    """`<agent>-<rule>-<hash of fingerprint and start>`: the same episode always gets the same name. The start
    is taken to the second, as the agent's status records a rule's activeAt, so the name an operator derives
    after a restart (from that status) is the name it derived before."""
    episode = hashlib.sha256(f"{signal.fingerprint}@{rfc3339(signal.started_at)}".encode()).hexdigest()[:10]
    stem = f"{signal.agent}-{slug(signal.name)}"
    limit = 253 - len(episode) - 1
    if len(stem) > limit:
        stem = stem[:limit].rstrip("-.")
    return f"{stem}-{episode}"


def build_incident(signal: Signal) -> dict[str, Any]:
    """The AgentIncident a new signal opens; the agent's severity playbook does the rest."""
    labels = {
        names.LABEL_MANAGED_BY: names.MANAGED_BY,
        LABEL_FINGERPRINT: signal.fingerprint,
        LABEL_SOURCE: signal.source,
        LABEL_RULE: slug(signal.name, 63),
    }
    if len(signal.agent) <= 63:
        labels[names.LABEL_AGENT] = signal.agent
    return {
        "apiVersion": "tourniquet.dev/v1alpha1",
        "kind": "AgentIncident",
        "metadata": {
            "name": incident_name(signal),
            "namespace": signal.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_SIGNAL: signal.readable},
        },
        "spec": {
            "agents": [signal.agent],
            "severity": signal.severity.value,
            "class": signal.incident_class.value,
            "summary": signal.summary[:SUMMARY_LIMIT],
            "window": {"start": rfc3339(signal.started_at)},
        },
    }


def detected_entry(signal: Signal) -> dict[str, Any]:
    """The timeline's first entry, at the signal's start: the threshold crossing in Prometheus's data (a
    rule), or the alert's startsAt (Alertmanager)."""
    if signal.source == SOURCE_ALERTMANAGER:
        message = f"alert {signal.name} started firing (its startsAt)"
    elif signal.start_measured:
        message = f"rule {signal.name} crossed its threshold (its first samples in Prometheus's data)"
    else:
        message = (
            f"rule {signal.name} returned samples when the operator first evaluated it (Prometheus's data did "
            "not show when they began)"
        )
    return {"time": _micro(signal.started_at), "event": "Detected", "message": message, "agent": signal.agent}


def first_detection(signal: Signal, now: datetime) -> dict[str, Any]:
    """The new incident's first status: `detection`, the `Detected` timeline entry (`Opened` follows) and how
    long detection took, from the signal's start (`timings.detectedSeconds`) when that start was measured."""
    status: dict[str, Any] = {
        "detection": {
            "fingerprint": signal.fingerprint,
            "rule": signal.name,
            "source": signal.source,
            "count": 1,
            "firstSeen": _micro(now),
            "lastSeen": _micro(now),
        },
        "timeline": [detected_entry(signal)],
    }
    if signal.start_measured:
        status["timings"] = {"detectedSeconds": round(latency_seconds(signal.started_at, now), 3)}
    return status


def repeated_detection(incident: dict[str, Any], signal: Signal, now: datetime) -> dict[str, Any]:
    """An open incident's `status.detection` after one more sighting of its signal."""
    previous = (incident.get("status") or {}).get("detection") or {}
    return {
        "fingerprint": signal.fingerprint,
        "rule": previous.get("rule") or signal.name,
        "source": previous.get("source") or signal.source,
        "count": int(previous.get("count") or 1) + 1,
        "firstSeen": previous.get("firstSeen") or _micro(signal.started_at),
        "lastSeen": _micro(now),
        "clearedAt": None,
    }


def cleared_detection(incident: dict[str, Any], at: datetime) -> dict[str, Any] | None:
    """`status.detection` recording that the source says the signal is gone; None if already recorded."""
    previous = (incident.get("status") or {}).get("detection") or {}
    if previous.get("clearedAt"):
        return None
    return {"clearedAt": _micro(at)}


def is_open(incident: dict[str, Any]) -> bool:
    return not (incident.get("spec") or {}).get("resolved") and not incident["metadata"].get("deletionTimestamp")


def oldest_open(incidents: list[dict[str, Any]]) -> dict[str, Any] | None:
    candidates = [i for i in incidents if is_open(i)]
    return min(
        candidates, key=lambda i: (i["metadata"].get("creationTimestamp") or "", i["metadata"]["name"]), default=None
    )


def _micro(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rule_signal(
    namespace: str,
    agent: str,
    rule: CompiledRule,
    samples: list[Sample],
    active_at: datetime,
    *,
    measured: bool = True,
) -> Signal:
    """The signal of a firing rule (`measured`: its activeAt is the crossing Prometheus's data show)."""
    summary = f"Rule {rule.name} fired on {agent}: {rule.description} ({describe_samples(samples)})"
    return Signal(
        namespace,
        agent,
        rule.name,
        SOURCE_PROMETHEUS,
        rule.severity,
        rule.incident_class,
        summary,
        active_at,
        start_measured=measured,
    )


# ---------------------------------------------------------------- Alertmanager


class PayloadError(ValueError):
    """The webhook body is not an Alertmanager notification."""


SEVERITY_WORDS = {
    "sev1": Severity.SEV1,
    "sev2": Severity.SEV2,
    "sev3": Severity.SEV3,
    "critical": Severity.SEV1,
    "page": Severity.SEV1,
    "error": Severity.SEV2,
    "warning": Severity.SEV2,
    "info": Severity.SEV3,
}


@dataclass(frozen=True)
class Alert:
    """One alert of a notification, mapped to an agent."""

    index: int
    firing: bool
    alertname: str
    agent: str
    namespace: str | None  # None: the agent's namespace is looked up by name
    severity: Severity
    incident_class: IncidentClass
    summary: str
    starts_at: datetime
    ends_at: datetime | None

    def signal(self, namespace: str) -> Signal:
        return Signal(
            namespace,
            self.agent,
            self.alertname,
            SOURCE_ALERTMANAGER,
            self.severity,
            self.incident_class,
            self.summary,
            self.starts_at,
        )


@dataclass(frozen=True)
class Refusal:
    index: int
    alertname: str
    reason: str


@dataclass
class Notification:
    alerts: list[Alert] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)


def parse_notification(payload: Any, now: datetime) -> Notification:
    """Read an Alertmanager webhook body (version 4); PayloadError if it is not one at all."""
    if not isinstance(payload, dict):
        raise PayloadError("the body is not a JSON object (expected an Alertmanager webhook notification)")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("the body has no 'alerts' list (expected an Alertmanager webhook notification)")
    result = Notification()
    for index, raw in enumerate(alerts):
        parsed = _parse_alert(index, raw, now)
        (result.refused if isinstance(parsed, Refusal) else result.alerts).append(parsed)  # type: ignore[arg-type]
    return result


def _parse_alert(index: int, raw: Any, now: datetime) -> Alert | Refusal:
    if not isinstance(raw, dict):
        return Refusal(index, "", "not an object")
    labels: dict[str, Any] = raw["labels"] if isinstance(raw.get("labels"), dict) else {}
    annotations: dict[str, Any] = raw["annotations"] if isinstance(raw.get("annotations"), dict) else {}
    alertname = str(labels.get("alertname") or "")
    if not alertname:
        return Refusal(index, alertname, "no alertname label")
    agent = labels.get("agent")
    if not isinstance(agent, str) or not agent:
        return Refusal(index, alertname, "no agent label (the AgentDeployment's name)")
    if not re.match(DNS_SUBDOMAIN, agent) or len(agent) > 253:
        return Refusal(index, alertname, f"agent label {agent!r} is not a valid AgentDeployment name")
    namespace = labels.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or not re.match(DNS_LABEL, namespace)):
        return Refusal(index, alertname, f"namespace label {namespace!r} is not a valid namespace name")
    severity_text = str(labels.get("severity") or "SEV2")
    severity = SEVERITY_WORDS.get(severity_text.lower())
    if severity is None:
        return Refusal(
            index, alertname, f"severity {severity_text!r} is not SEV1, SEV2 or SEV3 (or critical, warning, info)"
        )
    class_text = str(labels.get("class") or IncidentClass.OTHER.value)
    try:
        incident_class = IncidentClass(class_text)
    except ValueError:
        known = ", ".join(c.value for c in IncidentClass)
        return Refusal(index, alertname, f"class {class_text!r} is not one of {known}")
    status = raw.get("status", "firing")
    if status not in ("firing", "resolved"):
        return Refusal(index, alertname, f"status {status!r} is neither firing nor resolved")
    starts_at = parse_time(raw.get("startsAt")) or now
    ends_at = parse_time(raw.get("endsAt"))
    if ends_at is not None and ends_at.year <= 1:
        ends_at = None  # Alertmanager's zero time: no end yet
    summary = str(annotations.get("summary") or annotations.get("description") or "")
    summary = f"Alert {alertname} on {agent}" + (f": {summary}" if summary else "")
    return Alert(
        index,
        status == "firing",
        alertname,
        agent,
        namespace,
        severity,
        incident_class,
        summary,
        starts_at,
        ends_at if status != "firing" else None,
    )


def namespace_served(namespace: str, patterns: Sequence[str] | None) -> bool:
    """Whether an operator serving `patterns` (its `--namespace` values; None or empty: every namespace)
    watches `namespace`. A pattern is Kopf's: comma-separated globs, where `!glob` excludes what an earlier
    glob matched and a later glob matches again only what the first one did (a leading `!` implies `*`)."""
    return not patterns or any(_matches(namespace, pattern) for pattern in patterns)


def _matches(namespace: str, pattern: str) -> bool:
    globs = [glob.strip() for glob in pattern.split(",")]
    if globs[0].startswith("!"):
        globs.insert(0, "*")
    first = fnmatch.fnmatchcase(namespace, globs[0])
    matched = first
    for glob in globs[1:]:
        if glob.startswith("!"):
            matched = matched and not fnmatch.fnmatchcase(namespace, glob.lstrip("!"))
        elif first and fnmatch.fnmatchcase(namespace, glob):
            matched = True
    return matched


def is_pattern(namespace: str) -> bool:
    """A `--namespace` value that is a pattern, not one namespace's name."""
    return any(c in namespace for c in "*?[!,")


def latency_seconds(started_at: datetime, now: datetime) -> float:
    return max(0.0, (now - started_at).total_seconds())


__all__ = [
    "CONDITION_DEGRADED",
    "TEMPLATES",
    "Alert",
    "CompiledRule",
    "Degraded",
    "Notification",
    "PayloadError",
    "Refusal",
    "ResultShapeError",
    "RuleState",
    "RuleVerdict",
    "Sample",
    "Signal",
    "build_incident",
    "compile_rules",
    "decide_rule",
    "fingerprint",
    "incident_name",
    "parse_duration",
    "parse_notification",
    "plan_detection_status",
    "samples_for_agent",
]
