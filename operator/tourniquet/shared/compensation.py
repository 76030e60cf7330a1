"""Compensation plans: which actions an incident undoes, how, and a hash a human approves (pure).

Each write tool declares its inverse in the bundle (``compensation``): a ``reversal`` names the tool
that undoes it (``{type: reversal, tool: reverse_refund}``), a ``mitigation`` lists the steps a human
takes for what cannot be undone (an email sent), ``none`` says why nothing can be done. A plan selects
successful actions from the ledger and gives each its compensation:

* by **window** (``start <= time < end``), **tool**, **subject** (an action touching any of the given
  subjects), **bundle revision**;
* and, beyond every anchor, ``duplicatesOnly``: only an action whose *primary* subject (its first)
  already had an earlier successful action of the same tool, in the window or before it. The first
  refund of an order stays; the second, third, ... are reversed. An action with no subject is never a
  duplicate.

Selection is by content, so the same ledger and the same request give the same plan, and its ``hash``
(sha256 over the selector and every planned action with its compensation) names it: approval names the
hash, and a plan that changed since it was shown (new actions, another selector, another declaration)
no longer matches. Bad input raises :class:`PlanError` with a message a person can act on: a selector
naming a tool the agents do not have (or a read tool), a reversal naming a tool the bundle does not
declare.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

# The values of the models' CompensationType (a unit test holds them equal).
REVERSAL = "reversal"
MITIGATION = "mitigation"
NONE = "none"
PLAN_FORMAT = 1


class PlanError(ValueError):
    """The plan cannot be made from this input; nothing is executed. The message says what to fix."""


class PlannedAction(Protocol):
    """What the planner reads of a ledger action (tourniquet.runtime.ledger.Action has it)."""

    @property
    def idempotency_key(self) -> str: ...
    @property
    def agent(self) -> str: ...
    @property
    def tool(self) -> str: ...
    @property
    def subjects(self) -> tuple[str, ...]: ...
    @property
    def time(self) -> datetime: ...
    @property
    def outcome(self) -> str: ...
    @property
    def bundle_revision(self) -> int | None: ...


def _time(value: datetime | str, what: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise PlanError(f"{what} {value!r} is not an RFC 3339 time such as 2026-11-21T03:02:00Z") from None
    if value.tzinfo is None:
        raise PlanError(f"{what} must carry a time zone (e.g. 2026-11-21T03:02:00Z)")
    return value.astimezone(UTC)


def _rfc3339(value: datetime) -> str:
    text = value.astimezone(UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


@dataclass(frozen=True)
class Selector:
    """Which actions a plan takes: the window, and optionally tools, subjects, bundle revisions, duplicates."""

    start: datetime
    end: datetime | None = None
    tools: tuple[str, ...] | None = None
    subjects: tuple[str, ...] | None = None
    bundle_revisions: tuple[int, ...] | None = None
    duplicates_only: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _time(self.start, "window start"))
        if self.end is not None:
            object.__setattr__(self, "end", _time(self.end, "window end"))
            if self.end < self.start:
                raise PlanError(f"the window ends ({_rfc3339(self.end)}) before it starts ({_rfc3339(self.start)})")
        for name in ("tools", "subjects", "bundle_revisions"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(sorted(set(value))))

    def to_dict(self) -> dict[str, Any]:
        """The wire form (camelCase; unset selections left out): what the hash covers."""
        out: dict[str, Any] = {"start": _rfc3339(self.start)}
        if self.end is not None:
            out["end"] = _rfc3339(self.end)
        if self.tools is not None:
            out["tools"] = list(self.tools)
        if self.subjects is not None:
            out["subjects"] = list(self.subjects)
        if self.bundle_revisions is not None:
            out["bundleRevisions"] = list(self.bundle_revisions)
        if self.duplicates_only:
            out["duplicatesOnly"] = True
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Selector:
        known = {"start", "end", "tools", "subjects", "bundleRevisions", "duplicatesOnly"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PlanError(f"unknown selector field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if not data.get("start"):
            raise PlanError("a selector needs the window's start")

        def strings(name: str) -> tuple[str, ...] | None:
            value = data.get(name)
            if value is None:
                return None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise PlanError(f"selector {name} must be a list of strings, not {value!r}")
            return tuple(value)

        revisions = data.get("bundleRevisions")
        numbers = isinstance(revisions, list) and all(isinstance(r, int) and not isinstance(r, bool) for r in revisions)
        if revisions is not None and not numbers:
            raise PlanError(f"selector bundleRevisions must be a list of revision numbers, not {revisions!r}")
        return cls(
            start=data["start"],
            end=data.get("end"),
            tools=strings("tools"),
            subjects=strings("subjects"),
            bundle_revisions=tuple(revisions) if revisions is not None else None,
            duplicates_only=bool(data.get("duplicatesOnly", False)),
        )

    def in_window(self, moment: datetime) -> bool:
        return moment >= self.start and (self.end is None or moment < self.end)

    def holds(self, action: PlannedAction) -> bool:
        """Whether the action is in the window and matches the tool, subject and revision selections."""
        if not self.in_window(action.time):
            return False
        if self.tools is not None and action.tool not in self.tools:
            return False
        if self.subjects is not None and not set(action.subjects) & set(self.subjects):
            return False
        return self.bundle_revisions is None or action.bundle_revision in self.bundle_revisions


@dataclass(frozen=True)
class Declaration:
    """How one tool's actions are compensated, as its bundle declares."""

    type: str  # reversal | mitigation | none
    tool: str | None = None  # the reversing tool (reversal), or the tool a mitigation uses
    steps: tuple[str, ...] = ()
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.tool:
            out["tool"] = self.tool
        if self.steps:
            out["steps"] = list(self.steps)
        if self.reason:
            out["reason"] = self.reason
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Declaration:
        kind = data.get("type", NONE)
        if kind not in (REVERSAL, MITIGATION, NONE):
            raise PlanError(f"unknown compensation type {kind!r}; expected reversal, mitigation or none")
        return cls(
            type=kind, tool=data.get("tool"), steps=tuple(data.get("steps") or ()), reason=data.get("reason")
        )


UNDECLARED_REASON = "the bundle declares no compensation for this tool"
TYPES = (REVERSAL, MITIGATION, NONE)
SIDE_EFFECTS = ("write", "read")


def declarations_from_tools(tools: Any) -> dict[str, Declaration]:
    """Each write tool's compensation as a bundle's ``tools`` declare it, in their JSON form (camelCase, as the
    bundle ConfigMap holds them): a tool without one gets ``none``; read tools have nothing to compensate and
    are left out. A tool list that is not one, or a reversal naming a tool the bundle does not declare, raises
    :class:`PlanError`."""
    if not isinstance(tools, list) or not all(isinstance(t, Mapping) and isinstance(t.get("name"), str) for t in tools):
        raise PlanError(f"a bundle's tools are a list of objects with a name, not {str(tools)[:200]}")
    names = {t["name"] for t in tools}
    out: dict[str, Declaration] = {}
    for tool in tools:
        side_effects = tool.get("sideEffects") or "write"
        if side_effects not in SIDE_EFFECTS:
            raise PlanError(f"tool {tool['name']}: sideEffects is write or read, not {side_effects!r}")
        if side_effects != "write":
            continue
        comp = tool.get("compensation")
        if comp is None:
            out[tool["name"]] = Declaration(type=NONE, reason=UNDECLARED_REASON)
            continue
        if not isinstance(comp, Mapping):
            raise PlanError(f"tool {tool['name']}: its compensation is an object, not {comp!r}")
        kind = comp.get("type") or NONE
        if kind not in TYPES:
            raise PlanError(f"tool {tool['name']}: unknown compensation type {kind!r}; expected {', '.join(TYPES)}")
        if kind == REVERSAL and comp.get("tool") not in names:
            raise PlanError(
                f"tool {tool['name']}: its compensation is a reversal by {comp.get('tool')}, which the bundle does "
                f"not declare (its tools: {', '.join(sorted(names))}); declare {comp.get('tool')} in spec.bundle.tools"
            )
        steps = tuple(comp.get("steps") or ())
        description = comp.get("description")
        if not steps and kind == MITIGATION and description:
            steps = (description,)
        out[tool["name"]] = Declaration(
            type=kind,
            tool=comp.get("tool"),
            steps=steps,
            reason=comp.get("reason") or (description if kind == NONE else None),
        )
    return out


@dataclass(frozen=True)
class PlanItem:
    """One action the plan takes, and what is done about it."""

    idempotency_key: str
    agent: str
    tool: str
    time: datetime
    type: str  # reversal | mitigation | none
    compensating_tool: str | None = None

    def fingerprint(self) -> list[Any]:
        return [self.idempotency_key, self.agent, self.tool, self.type, self.compensating_tool]


@dataclass(frozen=True)
class ChecklistEntry:
    """A tool whose actions a human must mitigate (or that nothing can undo): how many, and what to do."""

    agent: str
    tool: str
    actions: int
    type: str
    steps: tuple[str, ...] = ()
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"agent": self.agent, "tool": self.tool, "actions": self.actions, "type": self.type}
        if self.steps:
            out["steps"] = list(self.steps)
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class CompensationPlan:
    """The actions selected, oldest first, each with its compensation; the counts; the hash."""

    selector: Selector
    agents: tuple[str, ...]
    items: tuple[PlanItem, ...]
    checklist: tuple[ChecklistEntry, ...] = ()
    hash: str = ""
    by_tool: dict[str, int] = field(default_factory=dict)

    @property
    def reversals(self) -> int:
        return sum(1 for i in self.items if i.type == REVERSAL)

    @property
    def irreversible(self) -> int:
        return sum(1 for i in self.items if i.type == MITIGATION)

    @property
    def skipped(self) -> int:
        return sum(1 for i in self.items if i.type == NONE)

    def counts(self) -> dict[str, int]:
        """``actions``: selected; ``planned``: to reverse; ``irreversible``: to mitigate; ``skipped``: nothing
        declared can be done."""
        return {
            "actions": len(self.items),
            "planned": self.reversals,
            "irreversible": self.irreversible,
            "skipped": self.skipped,
        }

    def summary(self) -> dict[str, Any]:
        """The plan as status shows it (no per-action list)."""
        return {
            "hash": self.hash,
            "selector": self.selector.to_dict(),
            "agents": list(self.agents),
            **self.counts(),
            "byTool": dict(self.by_tool),
            "checklist": [c.to_dict() for c in self.checklist],
        }


def plan_hash(selector: Selector, agents: Sequence[str], items: Iterable[PlanItem]) -> str:
    material = {
        "format": PLAN_FORMAT,
        "selector": selector.to_dict(),
        "agents": sorted(agents),
        "items": sorted(i.fingerprint() for i in items),
    }
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def check_selector(
    selector: Selector,
    declarations: Mapping[str, Mapping[str, Declaration]],
    all_tools: Mapping[str, Iterable[str]] | None = None,
) -> None:
    """Refuse a selector naming a tool that no agent has (or that has no side effects)."""
    if selector.tools is None:
        return
    writable = {tool for decls in declarations.values() for tool in decls}
    known = {tool for tools in (all_tools or {}).values() for tool in tools}
    for tool in selector.tools:
        if tool in writable:
            continue
        if tool in known:
            raise PlanError(f"tool {tool} in the selector is a read tool: it has no side effects to compensate")
        raise PlanError(
            f"unknown tool {tool} in the selector; the agents' write tools are: {', '.join(sorted(writable)) or 'none'}"
        )


def duplicate_keys(
    actions: Iterable[PlannedAction], earlier: Iterable[tuple[str, str, str]] = ()
) -> set[str]:
    """The keys of the successful actions whose primary subject already had an earlier successful action of
    the same tool (and agent): ``earlier`` holds the ``(agent, tool, subject)`` seen before the window."""
    seen = set(earlier)
    duplicates: set[str] = set()
    ordered = sorted((a for a in actions if a.outcome == "ok"), key=lambda a: (a.time, a.idempotency_key))
    for action in ordered:
        if not action.subjects:
            continue
        mark = (action.agent, action.tool, action.subjects[0])
        if mark in seen:
            duplicates.add(action.idempotency_key)
        else:
            seen.add(mark)
    return duplicates


def plan_compensation(
    selector: Selector,
    actions: Iterable[PlannedAction],
    declarations: Mapping[str, Mapping[str, Declaration]],
    *,
    earlier: Iterable[tuple[str, str, str]] = (),
    all_tools: Mapping[str, Iterable[str]] | None = None,
) -> CompensationPlan:
    """The plan for the given ledger actions (every successful action of the agents in the window, whatever
    the other selections: duplicates are judged against all of them) under each agent's declarations
    (agent -> tool -> :class:`Declaration`, see :func:`declarations_from_bundle`). ``earlier`` is what the
    ledger knows from before the window, ``(agent, tool, primary subject)`` with a successful action there.
    ``all_tools`` (agent -> every tool, read ones too) makes the error for a read tool in the selector precise.
    """
    check_selector(selector, declarations, all_tools)
    for agent, decls in declarations.items():
        for tool, decl in decls.items():
            if decl.type == REVERSAL and not decl.tool:
                raise PlanError(f"agent {agent}, tool {tool}: a reversal names the tool that undoes the action")
    agents = tuple(sorted(declarations))
    pool = [a for a in actions if a.outcome == "ok" and a.agent in declarations]
    in_window = [a for a in pool if selector.in_window(a.time)]
    dupes = duplicate_keys(in_window, earlier) if selector.duplicates_only else None
    items: list[PlanItem] = []
    for action in sorted(in_window, key=lambda a: (a.time, a.idempotency_key)):
        if not selector.holds(action):
            continue
        if dupes is not None and action.idempotency_key not in dupes:
            continue
        # A read tool, or a tool this bundle no longer has: nothing is declared to do.
        decl = declarations[action.agent].get(action.tool) or Declaration(type=NONE)
        items.append(
            PlanItem(
                idempotency_key=action.idempotency_key,
                agent=action.agent,
                tool=action.tool,
                time=action.time,
                type=decl.type,
                compensating_tool=decl.tool if decl.type in (REVERSAL, MITIGATION) else None,
            )
        )
    by_tool: dict[str, int] = {}
    counted: dict[tuple[str, str], int] = {}
    for item in items:
        by_tool[item.tool] = by_tool.get(item.tool, 0) + 1
        if item.type != REVERSAL:
            counted[(item.agent, item.tool)] = counted.get((item.agent, item.tool), 0) + 1
    checklist = []
    for (agent, tool), n in sorted(counted.items()):
        decl = declarations[agent].get(tool) or Declaration(type=NONE, reason=f"tool {tool} is not a write tool")
        checklist.append(ChecklistEntry(agent, tool, n, decl.type, decl.steps, decl.reason))
    return CompensationPlan(
        selector=selector,
        agents=agents,
        items=tuple(items),
        checklist=tuple(checklist),
        hash=plan_hash(selector, agents, items),
        by_tool=dict(sorted(by_tool.items())),
    )
