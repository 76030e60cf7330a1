"""The readiness checklist (pure): five questions every agent should answer yes to before it acts unattended.

1. **killSwitch** — the runtime acknowledged the control ConfigMap recently (it reports what it last applied in
   ``<agent>-control-ack``, see :mod:`tourniquet.runtime.ack`) and a drill contained this agent within
   ``readiness.drillContainSeconds`` (60) no longer than ``readiness.drillMaxAgeDays`` (30) ago;
2. **versionPin** — the model version is pinned, every consumer runs the pinned bundle revision, and names its
   images by a tag other than ``latest`` or by digest;
3. **compensation** — every write tool declares a reversal or a mitigation (a tool that is itself another's
   reversal is covered by it);
4. **traceRetention** — decision traces are kept at least 30 days where the postmortem can read them: every
   consumer's runtime writes to a shared ledger (``spec.ledger``, or a ``TOURNIQUET_LEDGER*`` setting that is a
   PostgreSQL URL or comes from a Secret) and keeps traces ``TOURNIQUET_TRACE_RETENTION_DAYS`` (30 by default)
   or longer;
5. **redeployGate** — ``spec.evaluation`` is set and can start.

Each item says what it saw and, when it is not ready, how to fix it. Messages name no moving times, so a
pass over an unchanged agent writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tourniquet.domain import network, wiring
from tourniquet.domain.conditions import parse_time
from tourniquet.domain.gate import template_problems
from tourniquet.models import AgentDeploymentSpec, SideEffects
from tourniquet.models.bundle import CompensationType
from tourniquet.models.review import ReadinessItem, ReadinessSpec, ReadinessStatus

ITEMS = ("killSwitch", "versionPin", "compensation", "traceRetention", "redeployGate")
MIN_RETENTION_DAYS = 30
ACK_FORGET_AFTER = timedelta(days=7)  # an acknowledgement this old is a pod long gone: pruned


def ack_configmap(agent: str) -> str:
    return f"{agent}-control-ack"


@dataclass(frozen=True)
class Ack:
    """One pod's report of the control flag it applies."""

    pod: str
    mode: str
    revoked: tuple[str, ...]
    reported_at: datetime | None
    applied_at: datetime | None = None


def parse_acks(data: Mapping[str, str] | None) -> list[Ack]:
    acks = []
    for pod, text in sorted((data or {}).items()):
        try:
            value = json.loads(text)
        except ValueError:
            continue
        if not isinstance(value, dict):
            continue
        acks.append(
            Ack(
                pod,
                str(value.get("mode") or ""),
                tuple(sorted(str(t) for t in value.get("revokedTools") or [])),
                parse_time(value.get("reportedAt")),
                parse_time(value.get("appliedAt")),
            )
        )
    return acks


def stale_acks(acks: list[Ack], now: datetime) -> list[str]:
    """Pods whose last report is so old they are gone: their entries are removed."""
    return [a.pod for a in acks if a.reported_at is None or now - a.reported_at > ACK_FORGET_AFTER]


@dataclass(frozen=True)
class DrillRecord:
    """A drill's outcome on one agent, as its AgentDrill recorded it."""

    drill: str
    finished_at: datetime | None
    passed: bool
    contained_seconds: float | None = None
    acknowledged_seconds: float | None = None


@dataclass
class ReadinessInputs:
    agent: str
    spec: AgentDeploymentSpec
    raw_spec: Mapping[str, Any]
    control: Mapping[str, Any] | None  # the control ConfigMap
    acks: list[Ack]
    drills: list[DrillRecord]
    consumers: Mapping[tuple[str, str], Mapping[str, Any] | None]
    active_revision: int | None
    now: datetime


Item = tuple[bool, str, str]  # ready, message, fix


def kill_switch(inputs: ReadinessInputs, settings: ReadinessSpec) -> Item:
    agent = inputs.agent
    data = (inputs.control or {}).get("data") or {}
    wanted = (str(data.get("mode") or "active"), tuple(sorted(network.revoked_tools_listed(data))))
    recent = inputs.now - timedelta(seconds=settings.acknowledged_within_seconds)
    fresh = [a for a in inputs.acks if a.reported_at is not None and a.reported_at >= recent]
    matching = [a for a in fresh if (a.mode, a.revoked) == wanted]
    window = _duration(settings.acknowledged_within_seconds)
    problems, fixes, seen = [], [], []
    if not fresh:
        problems.append(f"no agent pod acknowledged the control ConfigMap within the last {window}")
        fixes.append(
            "run the agent with tourniquet.runtime (Runtime.from_env reports what it applies) and grant its "
            f"ServiceAccount patch on configmaps named {ack_configmap(agent)}"
        )
    elif not matching:
        pod = fresh[0]
        problems.append(
            f"pod {pod.pod} applies mode {pod.mode or '?'} (revoked: {', '.join(pod.revoked) or 'none'}) but the "
            f"control ConfigMap says mode {wanted[0]} (revoked: {', '.join(wanted[1]) or 'none'})"
        )
        fixes.append("check that the agent follows its control ConfigMap (the runtime's logs say why not)")
    else:
        seen.append(f"{len(matching)} pod(s) acknowledged the control ConfigMap (mode {wanted[0]}) within {window}")
    oldest = inputs.now - timedelta(days=settings.drill_max_age_days)
    limit = settings.drill_contain_seconds
    good = [
        d
        for d in inputs.drills
        if d.passed and d.finished_at is not None and d.finished_at >= oldest and (d.contained_seconds or 0) < limit
    ]
    if good:
        best = max(good, key=lambda d: d.finished_at or inputs.now)
        seen.append(
            f"drill {best.drill} contained it in {best.contained_seconds:.1f}s on {best.finished_at:%Y-%m-%d}"
            if best.contained_seconds is not None
            else f"drill {best.drill} contained it on {best.finished_at:%Y-%m-%d}"
        )
    else:
        problems.append(f"no drill contained it in under {limit:g}s in the last {settings.drill_max_age_days} days")
        fixes.append(f"run one: kubectl tourniquet drill {agent} (or schedule an AgentDrill)")
    if problems:
        return False, "; ".join(problems + seen), "; ".join(fixes)
    return True, "; ".join(seen), ""


def version_pin(inputs: ReadinessInputs) -> Item:
    model = inputs.spec.bundle.model
    problems, fixes = [], []
    for (kind, name), workload in sorted(inputs.consumers.items()):
        if workload is None:
            continue
        wired = wiring.wired_revision(dict(workload))
        if inputs.active_revision is not None and wired != inputs.active_revision:
            problems.append(f"{kind} {name} runs bundle revision {wired} while {inputs.active_revision} is active")
            fixes.append(f"see why {kind} {name} is not wired (the agent's Ready condition)")
        template = ((workload.get("spec") or {}).get("template") or {}).get("spec") or {}
        for container in [*(template.get("initContainers") or []), *(template.get("containers") or [])]:
            image = str(container.get("image") or "")
            if floating_image(image):
                problems.append(f"{kind} {name} container {container.get('name')} runs {image or 'no image'}")
                fixes.append(f"pin {kind} {name}'s image by a release tag or a digest (@sha256:…)")
    pinned = f"model {model.name} pinned at {model.version}"
    if problems:
        return False, f"{pinned}; but {'; '.join(problems)}", "; ".join(dict.fromkeys(fixes))
    where = (
        f"every consumer runs bundle revision {inputs.active_revision} with pinned images"
        if inputs.consumers
        else "bundle pinned; no consumer"
    )
    return True, f"{pinned}; {where}", ""


def floating_image(image: str) -> bool:
    """An image reference that may point at other bytes tomorrow: no tag, or `latest`."""
    if not image:
        return True
    if "@sha256:" in image:
        return False
    last = image.rsplit("/", 1)[-1]
    return ":" not in last or last.rsplit(":", 1)[1] in ("latest", "")


def compensation(inputs: ReadinessInputs) -> Item:
    tools = inputs.spec.bundle.tools
    reversals = {t.compensation.tool for t in tools if t.compensation and t.compensation.tool}
    declared, missing = [], []
    for tool in tools:
        if tool.side_effects != SideEffects.WRITE:
            continue
        kind = tool.compensation.type if tool.compensation else CompensationType.NONE
        if kind in (CompensationType.REVERSAL, CompensationType.MITIGATION):
            target = f": {tool.compensation.tool}" if tool.compensation and tool.compensation.tool else ""
            declared.append(f"{tool.name} ({kind.value}{target})")
        elif tool.name in reversals:
            declared.append(f"{tool.name} (the reversal of another tool)")
        else:
            missing.append(tool.name)
    if missing:
        return (
            False,
            f"write tool(s) without a reversal or mitigation: {', '.join(missing)}",
            "declare compensation on each: {type: reversal, tool: <its inverse>} or, for what cannot be undone, "
            "{type: mitigation, description: what a human does}",
        )
    if not declared:
        return True, "no write tool: nothing to undo", ""
    return True, f"every write tool declares its undo: {', '.join(declared)}", ""


def _env(container: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(e.get("name")): e for e in container.get("env") or [] if e.get("name")}


def trace_retention(inputs: ReadinessInputs) -> Item:
    spec_ledger = bool(inputs.raw_spec.get("ledger"))
    problems, fixes, seen = [], [], []
    present = [(k, w) for k, w in sorted(inputs.consumers.items()) if w is not None]
    if not present:
        return (
            False,
            "no consumer: no runtime here keeps decision traces",
            "add the workloads that run the agent (spec.consumers) with tourniquet.runtime",
        )
    for (kind, name), workload in present:
        template = ((workload.get("spec") or {}).get("template") or {}).get("spec") or {}
        containers = template.get("containers") or []
        shared, retention, unknown = spec_ledger, None, False
        for container in containers:
            env = _env(container)
            for key, entry in env.items():
                if key.startswith("TOURNIQUET_LEDGER"):
                    value = str(entry.get("value") or "")
                    if entry.get("valueFrom") or value.startswith(("postgres://", "postgresql://")):
                        shared = True
            days = env.get("TOURNIQUET_TRACE_RETENTION_DAYS")
            if days is not None:
                if days.get("valueFrom"):
                    unknown = True
                else:
                    try:
                        retention = min(retention or 10**6, int(str(days.get("value"))))
                    except ValueError:
                        unknown = True
        if not shared:
            problems.append(f"{kind} {name} keeps its ledger in the pod (lost with it; the operator cannot read it)")
            fixes.append(
                "point the runtime at the shared ledger: spec.ledger, or TOURNIQUET_LEDGER from a Secret (PostgreSQL)"
            )
        if unknown:
            problems.append(f"{kind} {name} sets TOURNIQUET_TRACE_RETENTION_DAYS from elsewhere: cannot be checked")
            fixes.append(f"set TOURNIQUET_TRACE_RETENTION_DAYS to {MIN_RETENTION_DAYS} or more as a plain value")
        elif retention is not None and retention < MIN_RETENTION_DAYS:
            problems.append(f"{kind} {name} keeps decision traces {retention} days")
            fixes.append(f"set TOURNIQUET_TRACE_RETENTION_DAYS to {MIN_RETENTION_DAYS} or more (or leave it unset)")
        elif shared:
            seen.append(f"{kind} {name}: {retention or MIN_RETENTION_DAYS} days")
    if problems:
        return False, "; ".join(problems), "; ".join(dict.fromkeys(fixes))
    return True, f"decision traces kept in the shared ledger: {', '.join(seen)}", ""


def redeploy_gate(inputs: ReadinessInputs) -> Item:
    evaluation = inputs.spec.evaluation
    if evaluation is None:
        return (
            False,
            "no spec.evaluation: a new bundle revision rolls out without proving its regression cases pass",
            "declare spec.evaluation.jobTemplate: the agent's eval command (see the README's redeploy gate)",
        )
    problems = template_problems(evaluation.job_template)
    if problems:
        return False, f"spec.evaluation cannot start: {'; '.join(problems)}", "fix spec.evaluation.jobTemplate"
    return True, "new revisions roll out only once the evaluation Job passes the agent's regression cases", ""


def compute_readiness(inputs: ReadinessInputs) -> dict[str, Any]:
    """status.readiness: each item, and how many of the five are ready."""
    settings = inputs.spec.readiness or ReadinessSpec()
    results = {
        "killSwitch": kill_switch(inputs, settings),
        "versionPin": version_pin(inputs),
        "compensation": compensation(inputs),
        "traceRetention": trace_retention(inputs),
        "redeployGate": redeploy_gate(inputs),
    }
    items = [
        ReadinessItem(name=name, ready=ok, message=message, fix=fix) for name, (ok, message, fix) in results.items()
    ]
    ready = sum(1 for item in items if item.ready)
    return ReadinessStatus(summary=f"{ready}/{len(items)}", ready=ready, items=items).to_status()


def with_readiness(status: dict[str, Any], readiness: dict[str, Any] | None) -> dict[str, Any]:
    """The agent's status with this pass's readiness (None: keep what was there, e.g. an incident's pass)."""
    return status if readiness is None else {**status, "readiness": readiness}


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds % 60 == 0 else f"{seconds:g}s"
