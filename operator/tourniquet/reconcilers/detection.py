"""Detection: evaluate an agent's rules against Prometheus, turn signals into de-duplicated incidents.

One pass over one agent (the same function on every interval): gather (compile the rules, query
Prometheus) → decide (pending/firing per rule, pure) → act (open or update an incident per firing rule,
record a cleared one) → report (the agent's `status.detection` and its `DetectionDegraded` condition,
written only when they changed). Opening an AgentIncident is all containment needs: the incident
handler applies the agent's severity playbook at once.

Prometheus unreachable, slow or failing is a degraded condition, never a verdict: no incident is opened
and no rule changes state on a query that had no answer."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tourniquet import observability
from tourniquet.adapters.kube import AGENTDEPLOYMENTS, ApiError, KubeApi
from tourniquet.adapters.prometheus import PrometheusQuerier, PrometheusUnavailable, QueryRejected
from tourniquet.domain import detection as decide
from tourniquet.domain.conditions import rfc3339
from tourniquet.domain.detection import CompiledRule, Degraded, RuleState, Sample
from tourniquet.reconcilers.lane import Lane
from tourniquet.reconcilers.queue import Hold, unshared
from tourniquet.reconcilers.signals import SignalOutcome, _now, record_cleared, record_signal

log = logging.getLogger(__name__)


DEFAULT_INTERVAL_SECONDS = 15.0


MIN_INTERVAL_SECONDS = 1.0


@dataclass
class RuleResult:
    rule: CompiledRule
    state: RuleState
    active_at: datetime | None = None
    error: str | None = None
    outcome: SignalOutcome | None = None
    samples: list[Sample] = field(default_factory=list)
    cleared: bool = False  # it was firing and no longer is


def _recorded(status: dict[str, Any], result: RuleResult) -> bool:
    """Whether the agent's status (as last read) already records this rule's episode as it is now."""
    rules = (status.get("detection") or {}).get("rules") or []
    entry: dict[str, Any] = next((r for r in rules if r.get("name") == result.rule.name), {})
    active_at = rfc3339(result.active_at) if result.active_at is not None else None
    return entry.get("state") == result.state.value and entry.get("activeAt") == active_at


@dataclass
class DetectionReport:
    agent: str
    namespace: str
    interval_seconds: float
    rules: list[RuleResult] = field(default_factory=list)
    degraded: Degraded | None = None
    status_written: bool = False

    @property
    def firing(self) -> list[str]:
        return [r.rule.name for r in self.rules if r.state == RuleState.FIRING]


class AgentDetector:
    """Evaluates one agent's rules, pass after pass; remembers rule states and incidents between passes.

    The memory is seeded from the agent's status on the first pass, so `for:` clocks and episodes (and
    with them, incident names) survive an operator restart.
    """

    def __init__(
        self,
        api: KubeApi,
        prometheus: PrometheusQuerier | None,
        namespace: str,
        name: str,
        *,
        off_reason: str | None = None,
        holds: tuple[Hold, Hold] = (unshared, unshared),
        lane: Lane | None = None,
    ) -> None:
        """`holds`: the agents' and the incidents' work queues' (no pass on an object while this writes on it).
        `lane`: the operator's background lane, on which an opened incident's Events wait."""
        self.api = api
        self.lane = lane or Lane()
        self.hold_agent, self.hold_incident = holds
        self.prometheus = prometheus
        self.namespace = namespace
        self.name = name
        self.off_reason = off_reason or "TOURNIQUET_PROMETHEUS_URL is not set on the operator"
        self._states: dict[str, tuple[RuleState, datetime | None]] | None = None
        self._incidents: dict[str, str] = {}  # rule -> the incident of its current episode
        self._suppressed: dict[str, datetime] = {}  # rule -> the episode whose incident a human resolved
        self._inactive_at: dict[str, datetime] = {}  # rule -> when this process last saw it return nothing
        self._unmeasured: set[str] = set()  # rules whose episode start is when this process first saw samples
        self._alone: set[str] = set()  # expressions queried on their own (Prometheus refused them combined)

    async def evaluate(self, body: dict[str, Any], *, now: datetime | None = None) -> DetectionReport:
        now = now or _now()
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        detection: dict[str, Any] = spec["detection"] if isinstance(spec.get("detection"), dict) else {}
        raw_rules: list[Any] = detection["rules"] if isinstance(detection.get("rules"), list) else []
        report = DetectionReport(self.name, self.namespace, interval_seconds(detection))
        if self._states is None:
            self._states = decide.previous_rule_states(status)
        if not raw_rules:
            self._states, self._incidents, self._suppressed, self._inactive_at = {}, {}, {}, {}
            self._unmeasured = set()
            report.status_written = await self._report(body, None, None, now)
            return report

        compiled = decide.compile_rules(raw_rules, self.name)
        if self.prometheus is None:
            report.degraded = Degraded("DetectionOff", f"detection is off: {self.off_reason}")
            answers: list[Any] = [None] * len(compiled)
        else:
            answers = await self._query_all(compiled)
        starts = await asyncio.gather(
            *(
                self._episode_start(rule, answer, now, report.interval_seconds)
                for rule, answer in zip(compiled, answers, strict=True)
            )
        )
        for rule, answer, start in zip(compiled, answers, starts, strict=True):
            if isinstance(start, PrometheusUnavailable):
                answer, start = start, None  # no verdict without the episode's start
            report.rules.append(self._judge(rule, answer, report, now, start))
        self._forget_removed({r.rule.name for r in report.rules})
        evaluated = sum(1 for r in report.rules if r.state != RuleState.INVALID)
        url = self.prometheus.url if self.prometheus else None
        condition = decide.degraded_condition(report.degraded, evaluated, url)
        rules = [decide.rule_status(r.rule, r.state, r.active_at, r.error) for r in report.rules]
        if any(r.state == RuleState.FIRING and not _recorded(status, r) for r in report.rules):
            # Record before you change: an episode's start is in the agent's status before its incident exists,
            # so an operator restarted in between derives the same incident name.
            report.status_written = await self._report(body, rules, condition, now)
        for result in report.rules:
            await self._act(result, now)
        report.status_written = await self._report(body, rules, condition, now) or report.status_written
        return report

    async def _query_all(self, compiled: list[CompiledRule]) -> list[list[Sample] | Exception | None]:
        """Each rule's samples, or why there are none: QueryRejected/ResultShapeError (the rule is wrong),
        PrometheusUnavailable (no verdict); None for a rule that is not evaluated.

        The agent's rules go to Prometheus as one query; when Prometheus refuses it, each rule is asked on
        its own, and a rule refused on its own is queried alone from then on.
        """
        answers: dict[str, list[Sample] | Exception] = {}
        valid = [r for r in compiled if r.valid]
        self._alone &= {r.expr for r in valid if r.expr}
        fallback: list[CompiledRule] = []
        together = [r for r in valid if r.expr not in self._alone]
        alone = [r for r in valid if r.expr in self._alone]
        if len(together) > 1:
            try:
                result = await self._ask(decide.combined_expr(together))
                parts = decide.split_combined(result, together)
                for rule in together:
                    answers[rule.name] = decide.samples_for_agent(parts[rule.name], self.name)
            except (QueryRejected, decide.ResultShapeError):
                fallback = together
                alone += together
            except PrometheusUnavailable as error:
                answers.update((rule.name, error) for rule in together)
        else:
            alone += together
        results = await asyncio.gather(*(self._query_alone(rule) for rule in alone))
        for rule, answer in zip(alone, results, strict=True):
            answers[rule.name] = answer
            if isinstance(answer, QueryRejected | decide.ResultShapeError):
                self._alone.add(rule.expr or "")
        if fallback and not any(r.expr in self._alone for r in fallback):
            self._alone |= {r.expr or "" for r in fallback}  # refused together only: ask them one by one
        return [answers.get(rule.name) for rule in compiled]

    async def _query_alone(self, rule: CompiledRule) -> list[Sample] | Exception:
        assert rule.expr is not None
        try:
            return decide.samples_for_agent(await self._ask(rule.expr), self.name)
        except (QueryRejected, decide.ResultShapeError, PrometheusUnavailable) as error:
            return error

    async def _ask(self, expr: str) -> Any:
        assert self.prometheus is not None
        try:
            return await self.prometheus.query(expr)
        except (QueryRejected, PrometheusUnavailable) as error:
            reason = error.reason if isinstance(error, PrometheusUnavailable) else "QueryRejected"
            observability.EVALUATION_ERRORS.labels(reason).inc()
            raise

    async def _episode_start(
        self, rule: CompiledRule, answer: Any, now: datetime, interval: float
    ) -> datetime | PrometheusUnavailable | None:
        """When a new episode's samples began, by Prometheus's data (a range query of the rule, 1 s steps): the
        real threshold crossing, not when this operator happened to look. None when no episode starts now,
        or Prometheus's data do not show it; the error when Prometheus could not answer."""
        assert self._states is not None
        if self.prometheus is None or not rule.valid or rule.expr is None or not isinstance(answer, list):
            return None
        if not answer:
            return None
        if not decide.new_episode(*self._states.get(rule.name, (RuleState.INACTIVE, None))):
            return None
        start, end = decide.crossing_window(now, self._inactive_at.get(rule.name), interval)
        try:
            result = await self.prometheus.query_range(rule.expr, start, end, decide.CROSSING_STEP_SECONDS)
        except (QueryRejected, PrometheusUnavailable) as error:
            reason = error.reason if isinstance(error, PrometheusUnavailable) else "QueryRejected"
            observability.EVALUATION_ERRORS.labels(reason).inc()
            if isinstance(error, PrometheusUnavailable):
                return error
            where = f"{self.namespace}/{self.name}"
            log.warning("Prometheus refused the range query of rule %s of %s: %s", rule.name, where, error)
            return None
        return decide.first_crossing(result, self.name)

    def _judge(
        self, rule: CompiledRule, answer: Any, report: DetectionReport, now: datetime, started: datetime | None
    ) -> RuleResult:
        assert self._states is not None
        previous_state, previous_active = self._states.get(rule.name, (RuleState.INACTIVE, None))
        if not rule.valid:
            self._states[rule.name] = (RuleState.INVALID, None)
            return RuleResult(rule, RuleState.INVALID, error=rule.error)
        if isinstance(answer, QueryRejected | decide.ResultShapeError):
            self._states[rule.name] = (RuleState.INVALID, None)
            return RuleResult(rule, RuleState.INVALID, error=str(answer))
        if answer is None or isinstance(answer, PrometheusUnavailable):
            # No verdict: the rule keeps what it was; the condition says why.
            if isinstance(answer, PrometheusUnavailable) and report.degraded is None:
                report.degraded = Degraded(answer.reason, answer.message)
            kept = previous_state if previous_state != RuleState.INVALID else RuleState.INACTIVE
            return RuleResult(rule, kept, previous_active)
        samples: list[Sample] = answer
        verdict = decide.decide_rule(previous_state, previous_active, bool(samples), now, rule.for_seconds, started)
        self._states[rule.name] = (verdict.state, verdict.active_at)
        if not samples:
            self._inactive_at[rule.name] = now
            self._unmeasured.discard(rule.name)
        elif decide.new_episode(previous_state, previous_active):
            if started is None:
                self._unmeasured.add(rule.name)
            else:
                self._unmeasured.discard(rule.name)
        return RuleResult(rule, verdict.state, verdict.active_at, samples=samples, cleared=verdict.cleared)

    async def _act(self, result: RuleResult, now: datetime) -> None:
        """Open or count the incident of a firing rule; record on it that a rule cleared."""
        rule = result.rule
        try:
            if result.state == RuleState.FIRING and result.active_at is not None:
                result.outcome = await self._fire(rule, result.samples, result.active_at, now)
            elif result.cleared:
                known = self._incidents.pop(rule.name, None)
                self._suppressed.pop(rule.name, None)
                result.outcome = await record_cleared(
                    self.api,
                    self.namespace,
                    self.name,
                    rule.name,
                    decide.SOURCE_PROMETHEUS,
                    now,
                    known=known,
                    hold=self.hold_incident,
                )
        except ApiError as error:
            # A firing rule tries again on the next pass; the other rules are not held up.
            where = f"{self.namespace}/{self.name}"
            log.warning("Could not record rule %s of %s on its incident: %s", rule.name, where, error)

    async def _fire(
        self, rule: CompiledRule, samples: list[Sample], active_at: datetime, now: datetime
    ) -> SignalOutcome:
        if self._suppressed.get(rule.name) == active_at:
            return SignalOutcome("suppressed", self._incidents.get(rule.name), "this episode's incident is resolved")
        measured = rule.name not in self._unmeasured
        signal = decide.rule_signal(self.namespace, self.name, rule, samples, active_at, measured=measured)
        known = self._incidents.get(rule.name)
        outcome = await record_signal(self.api, signal, now=now, known=known, hold=self.hold_incident, lane=self.lane)
        if outcome.incident is not None:
            self._incidents[rule.name] = outcome.incident
        if outcome.outcome == "suppressed":
            self._suppressed[rule.name] = active_at
        return outcome

    def _forget_removed(self, present: set[str]) -> None:
        assert self._states is not None
        for memory in (self._states, self._incidents, self._suppressed, self._inactive_at):
            for gone in set(memory) - present:
                del memory[gone]
        self._unmeasured &= present

    async def _report(
        self,
        body: dict[str, Any],
        rules: list[dict[str, Any]] | None,
        condition: tuple[bool, str, str] | None,
        now: datetime,
    ) -> bool:
        generation = body.get("metadata", {}).get("generation")
        # The body in hand may lag a write by milliseconds; it only decides whether to look closer.
        status = body.get("status") or {}
        if decide.plan_detection_status(status, rules, condition, now=now, generation=generation) is None:
            return False
        return await write_detection_status(
            self.api, self.namespace, self.name, rules, condition, now, generation, hold=self.hold_agent
        )


def interval_seconds(detection: Any) -> float:
    """spec.detection.intervalSeconds, or the default for anything else."""
    raw = detection.get("intervalSeconds") if isinstance(detection, dict) else None
    if isinstance(raw, int | float) and not isinstance(raw, bool) and raw >= MIN_INTERVAL_SECONDS:
        return float(raw)
    return DEFAULT_INTERVAL_SECONDS


async def write_detection_status(
    api: KubeApi,
    namespace: str,
    name: str,
    rules: list[dict[str, Any]] | None,
    condition: tuple[bool, str, str] | None,
    now: datetime,
    generation: int | None,
    *,
    hold: Hold = unshared,
) -> bool:
    """Merge-patch `status.detection` and the DetectionDegraded condition, keeping every other condition.

    Read fresh while holding the agent (no pass of it, which writes its status, runs meanwhile), and sent
    with the resourceVersion read, so a writer outside this process makes it retry, not lose data.
    """
    async with hold((namespace, name)):
        for attempt in range(1, 4):
            fresh = await api.get_or_none(AGENTDEPLOYMENTS, namespace, name)
            if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                return False
            patch = decide.plan_detection_status(
                fresh.get("status") or {}, rules, condition, now=now, generation=generation
            )
            if patch is None:
                return False
            body = {"metadata": {"resourceVersion": fresh["metadata"]["resourceVersion"]}, "status": patch}
            try:
                await api.patch(AGENTDEPLOYMENTS, namespace, name, body, subresource="status")
            except ApiError as error:
                if error.conflict and attempt < 3:
                    continue
                raise
            return True
    return False
