"""Detection: evaluate an agent's rules against Prometheus, turn signals into de-duplicated incidents.

One pass over one agent (the same function on every interval): gather (compile the rules, query
Prometheus) → decide (pending/firing per rule, pure) → act (open or update an incident per firing rule,
record a cleared one) → report (the agent's `status.detection` and its `DetectionDegraded` condition,
written only when they changed). Opening an AgentIncident is all containment needs: the incident
handler applies the agent's severity playbook at once.

Prometheus unreachable, slow or failing is a degraded condition, never a verdict: no incident is opened
and no rule changes state on a query that had no answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tourniquet import observability
from tourniquet.adapters.kube import AGENTDEPLOYMENTS, AGENTINCIDENTS, ApiError, KubeApi
from tourniquet.adapters.prometheus import PrometheusQuerier, PrometheusUnavailable, QueryRejected
from tourniquet.domain import detection as decide
from tourniquet.domain import names
from tourniquet.domain.conditions import rfc3339
from tourniquet.domain.detection import CompiledRule, Degraded, RuleState, Sample, Signal
from tourniquet.domain.incident import micro_time
from tourniquet.reconcilers import agent_status
from tourniquet.reconcilers.events import post_events_later
from tourniquet.reconcilers.locks import lock_for

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_SECONDS = 15.0
MIN_INTERVAL_SECONDS = 1.0


def _now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- signals → incidents


@dataclass(frozen=True)
class SignalOutcome:
    outcome: str  # opened | updated | suppressed | cleared | ignored
    incident: str | None
    message: str

    @property
    def open(self) -> bool:
        return self.outcome in ("opened", "updated", "cleared")


async def record_signal(
    api: KubeApi, signal: Signal, *, now: datetime | None = None, known: str | None = None
) -> SignalOutcome:
    """Open an incident for `signal`, or count one more sighting on the open incident with its fingerprint.

    `known`: the incident this signal's episode opened before (skips the lookup). A new incident's name
    comes from the fingerprint and the signal's start, so a repeat of the same episode that finds no open
    incident by label (a stale read, a restart) hits 409 AlreadyExists and is recognised. An episode whose
    incident a human resolved is not reopened: the signal has to clear and start again.
    """
    now = now or _now()
    namespace = signal.namespace
    if known is not None:
        updated = await _count_sighting(api, namespace, known, signal, now)
        if updated is not None:
            return updated
    candidate = decide.oldest_open(await _by_fingerprint(api, namespace, signal.fingerprint))
    if candidate is not None:
        updated = await _count_sighting(api, namespace, candidate["metadata"]["name"], signal, now)
        if updated is not None:
            return updated
    body = decide.build_incident(signal)
    name = body["metadata"]["name"]
    async with lock_for("AgentIncident", namespace, name):
        body["metadata"].setdefault("annotations", {})[names.ANNOTATION_OPENED_AT] = micro_time(_now())
        try:
            created = await api.create(AGENTINCIDENTS, namespace, body)
        except ApiError as error:
            if not error.already_exists:
                raise
            existing = await api.get_or_none(AGENTINCIDENTS, namespace, name)
            if existing is not None and decide.is_open(existing):
                repeated = decide.repeated_detection(existing, signal, now)
                await _patch_detection(api, namespace, name, repeated)
                _count(signal.source, "updated")
                return SignalOutcome("updated", name, f"counted on open incident {name} (found by its name)")
            _count(signal.source, "suppressed")
            return SignalOutcome(
                "suppressed",
                name,
                f"incident {name} for this episode of {signal.readable} is resolved; it is not reopened until the "
                "signal clears and starts again",
            )
        # The detection record (and the timeline's Detected entry, which Opened follows) goes in before the
        # incident handler (waiting on this lock) first reads it.
        first = decide.first_detection(signal, now)
        await api.patch(AGENTINCIDENTS, namespace, name, {"status": first}, subresource="status")
    post_events_later(api, created, first["timeline"])
    if signal.start_measured:
        latency = decide.latency_seconds(signal.started_at, now)
        observability.DETECTION_LATENCY.labels(signal.source).observe(latency)
    _count(signal.source, "opened")
    log.info("Opened AgentIncident %s/%s (%s): %s", namespace, name, signal.severity.value, signal.summary)
    return SignalOutcome("opened", name, f"opened incident {name}")


async def record_cleared(
    api: KubeApi, namespace: str, agent: str, name: str, source: str, at: datetime, *, known: str | None = None
) -> SignalOutcome:
    """The source says the signal is gone: record it on the open incident, which stays open for a human."""

    async def clear(incident: str) -> SignalOutcome | None:
        async with lock_for("AgentIncident", namespace, incident):
            fresh = await api.get_or_none(AGENTINCIDENTS, namespace, incident)
            if fresh is None or not decide.is_open(fresh):
                return None
            patch = decide.cleared_detection(fresh, at)
            if patch is not None:
                await _patch_detection(api, namespace, incident, patch)
                _count(source, "cleared")
        return SignalOutcome("cleared", incident, f"recorded on open incident {incident}; a human resolves it")

    if known is not None:
        done = await clear(known)
        if done is not None:
            return done
    candidate = decide.oldest_open(await _by_fingerprint(api, namespace, decide.fingerprint(namespace, agent, name)))
    if candidate is not None:
        done = await clear(candidate["metadata"]["name"])
        if done is not None:
            return done
    return SignalOutcome("ignored", None, f"no open incident for {namespace}/{agent}/{name}")


async def _by_fingerprint(api: KubeApi, namespace: str, fp: str) -> list[dict[str, Any]]:
    return await api.list(AGENTINCIDENTS, namespace, label_selector=f"{decide.LABEL_FINGERPRINT}={fp}")


async def _count_sighting(
    api: KubeApi, namespace: str, name: str, signal: Signal, now: datetime
) -> SignalOutcome | None:
    """One more sighting on incident `name` if it is open (read fresh under its lock); None otherwise."""
    async with lock_for("AgentIncident", namespace, name):
        fresh = await api.get_or_none(AGENTINCIDENTS, namespace, name)
        labels = (fresh or {}).get("metadata", {}).get("labels") or {}
        if fresh is None or not decide.is_open(fresh) or labels.get(decide.LABEL_FINGERPRINT) != signal.fingerprint:
            return None
        await _patch_detection(api, namespace, name, decide.repeated_detection(fresh, signal, now))
    _count(signal.source, "updated")
    return SignalOutcome("updated", name, f"counted on open incident {name}")


async def _patch_detection(api: KubeApi, namespace: str, name: str, record: dict[str, Any]) -> None:
    await api.patch(AGENTINCIDENTS, namespace, name, {"status": {"detection": record}}, subresource="status")


def _count(source: str, outcome: str) -> None:
    observability.SIGNALS.labels(source, outcome).inc()


# ---------------------------------------------------------------- one agent's rules


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
    ) -> None:
        self.api = api
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
                    self.api, self.namespace, self.name, rule.name, decide.SOURCE_PROMETHEUS, now, known=known
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
        outcome = await record_signal(self.api, signal, now=now, known=self._incidents.get(rule.name))
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
        return await write_detection_status(self.api, self.namespace, self.name, rules, condition, now, generation)


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
) -> bool:
    """Merge-patch `status.detection` and the DetectionDegraded condition, keeping every other condition.

    Read fresh under the agent's lock (the agent reconcile writes its status under the same lock), and
    sent with the resourceVersion read, so a writer outside this process makes it retry, not lose data.
    """
    async with lock_for("AgentDeployment", namespace, name):
        await agent_status.flush(namespace, name)  # a status an incident pass left pending goes first
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


# ---------------------------------------------------------------- Alertmanager alerts


@dataclass(frozen=True)
class AlertOutcome:
    index: int
    alertname: str
    agent: str | None
    outcome: str  # opened | updated | suppressed | cleared | ignored | refused
    incident: str | None = None
    reason: str = ""
    unwatched: bool = False  # refused: its namespace is not one the operator watches

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"index": self.index, "alertname": self.alertname, "outcome": self.outcome}
        if self.agent:
            entry["agent"] = self.agent
        if self.incident:
            entry["incident"] = self.incident
        if self.reason:
            entry["reason"] = self.reason
        return entry


async def receive_alerts(
    api: KubeApi,
    notification: decide.Notification,
    *,
    now: datetime | None = None,
    served: Sequence[str] | None = None,
) -> list[AlertOutcome]:
    """Map each alert to its agent and open, count or clear its incident (same fingerprint rules as rules).

    `served`: the namespaces the operator watches (its `--namespace` values; None: all). An alert for an
    agent elsewhere is refused as unwatched, and so is one whose namespace the API server forbids the
    operator to read (an operator that does not know its namespaces, with the chart's RBAC). A resolved
    alert never resolves the incident (a human does); it is recorded on it. Other Kubernetes API errors
    propagate (the receiver answers 503, and Alertmanager retries).
    """
    now = now or _now()
    outcomes = [AlertOutcome(r.index, r.alertname, None, "refused", reason=r.reason) for r in notification.refused]
    everywhere: list[dict[str, Any]] | None = None
    for alert in notification.alerts:
        namespace = alert.namespace

        def refuse(reason: str, *, unwatched: bool = False, alert: decide.Alert = alert) -> None:
            outcomes.append(
                AlertOutcome(alert.index, alert.alertname, alert.agent, "refused", reason=reason, unwatched=unwatched)
            )

        if namespace is None:
            if everywhere is None:
                everywhere = await _served_agents(api, served)
            homes = sorted(a["metadata"]["namespace"] for a in everywhere if a["metadata"]["name"] == alert.agent)
            if len(homes) != 1:
                refuse(
                    f"no AgentDeployment named {alert.agent} in any namespace"
                    + (f" this operator watches ({', '.join(served)})" if served else "")
                    if not homes
                    else f"AgentDeployment {alert.agent} exists in namespaces {', '.join(homes)}: add a namespace label"
                )
                continue
            namespace = homes[0]
        elif not decide.namespace_served(namespace, served):
            refuse(
                f"namespace {namespace} is not watched by this operator (it watches {', '.join(served or ())})",
                unwatched=True,
            )
            continue
        else:
            try:
                found = await api.get_or_none(AGENTDEPLOYMENTS, namespace, alert.agent)
            except ApiError as error:
                if error.status != 403:
                    raise
                refuse(
                    f"namespace {namespace} is not watched by this operator (it may not read AgentDeployments "
                    f"there: {error.message})",
                    unwatched=True,
                )
                continue
            if found is None:
                refuse(f"AgentDeployment {alert.agent} not found in namespace {namespace}")
                continue
        if alert.firing:
            result = await record_signal(api, alert.signal(namespace), now=now)
        else:
            result = await record_cleared(
                api, namespace, alert.agent, alert.alertname, decide.SOURCE_ALERTMANAGER, alert.ends_at or now
            )
        outcomes.append(
            AlertOutcome(alert.index, alert.alertname, alert.agent, result.outcome, result.incident, result.message)
        )
    return sorted(outcomes, key=lambda o: o.index)


async def _served_agents(api: KubeApi, served: Sequence[str] | None) -> list[dict[str, Any]]:
    """The AgentDeployments in the namespaces the operator watches: listed in each when they are names (the
    chart grants nothing more), else (every namespace, patterns, or not told which: `kopf run`) cluster-wide
    and filtered."""
    if served and not any(decide.is_pattern(n) for n in served):
        listed = await asyncio.gather(*(api.list(AGENTDEPLOYMENTS, n) for n in served))
        return [agent for agents in listed for agent in agents]
    return [a for a in await api.list(AGENTDEPLOYMENTS) if decide.namespace_served(a["metadata"]["namespace"], served)]
