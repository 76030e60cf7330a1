"""The built-in detection templates: one row per template, its parameters and the PromQL it builds.

Templates are written against the standard agent metrics of :mod:`tourniquet.runtime.metrics` and select one
agent with ``agent="<name>"``. Event counters whose label values appear only when the first event happens (a
task's failures, a tool's denials) are counted as ``(S unless S offset W) or increase(S[W])``: ``increase()``
alone cannot see a series born within the window (its first sample is its baseline), so a series that did not
exist ``W`` ago counts whole, and an older one counts its increase (which survives a counter reset)."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tourniquet.domain.detection.promql import (
    CONTEXT_TOKENS,
    COST,
    POLICY_DENIALS,
    REPEATED_CALLS,
    SESSIONS,
    TASK_FAILURES,
    TOKENS,
    events_within,
    number,
    parse_duration,
    selector,
)
from tourniquet.models import Severity
from tourniquet.models.agentdeployment import DetectionTemplate
from tourniquet.models.agentincident import IncidentClass


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
    growth = f"{now} > {number(p['growthFactor'])} * {before} and {before} > 0 and {now} >= {p['minTokens']}"
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
