"""Detection rules: compiled to PromQL (raw ``expr``, any sample returned fires, or a template with
parameters; every compiled expression is shown in the agent's status, ready to paste into Grafana), their
several rules in one query, their pending -> firing verdicts, and the agent's detection status."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from tourniquet.domain.conditions import find_condition, parse_time, rfc3339, set_condition
from tourniquet.domain.detection.promql import ResultShapeError, parse_duration
from tourniquet.domain.detection.templates import TEMPLATES, template_params
from tourniquet.domain.errors import describe_validation_error
from tourniquet.models import Severity
from tourniquet.models.agentdeployment import DetectionRule, DetectionStatus, RuleStatus
from tourniquet.models.agentincident import IncidentClass

CONDITION_DEGRADED = "DetectionDegraded"


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
    active = active_at is not None and state in (RuleState.PENDING, RuleState.FIRING)
    entry = RuleStatus(
        name=rule.name,
        state=state.value,
        expr=rule.expr or None,
        active_at=rfc3339(active_at) if active_at is not None and active else None,
        error=error or None,
    )
    return entry.to_api()  # without the fields left unset


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
    detection = DetectionStatus(rules=rules, last_evaluated_at=rfc3339(now))
    return {"detection": detection.to_status(), "conditions": new_conditions}


def _same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    def key(conditions: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        fields = ("type", "status", "reason", "message", "observedGeneration")
        return sorted(tuple(str(c.get(f)) for f in fields) for c in conditions)

    return key(a) == key(b)
