"""Blast radius: what an incident's agents did in its window, per tool, and what of it can be undone (pure).

The ledger counts, per agent and tool, the successful actions in the window, their distinct subjects and
the sum of their declared amounts (see ``SqlLedger.blast_radius``); the bundle says which tools can be
reversed. :func:`compute_blast_radius` puts the two together into what ``status.blastRadius`` shows.

Subjects are distinct per agent; across agents they are added up (two agents touching one customer count
it twice), which is exact for the usual one-agent incident.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from tourniquet.domain.compensation import NONE, REVERSAL, Declaration
from tourniquet.models.agentincident import ToolBlastRadius


class ToolCounts(Protocol):
    """One tool's counts from the ledger (``tourniquet.runtime.ledger.ToolRadius`` has them)."""

    @property
    def tool(self) -> str: ...
    @property
    def actions(self) -> int: ...
    @property
    def subjects(self) -> int: ...
    @property
    def amounts(self) -> dict[str, int]: ...
    @property
    def first(self) -> datetime | None: ...
    @property
    def last(self) -> datetime | None: ...


class AgentCounts(Protocol):
    """One agent's counts from the ledger (``tourniquet.runtime.ledger.LedgerRadius`` has them)."""

    @property
    def tools(self) -> tuple[ToolCounts, ...]: ...
    @property
    def subjects(self) -> int: ...


@dataclass(frozen=True)
class ToolBlast:
    agent: str
    tool: str
    actions: int
    subjects: int
    amounts: dict[str, int]
    compensation: str  # reversal | mitigation | none

    @property
    def reversible(self) -> bool:
        return self.compensation == REVERSAL

    def to_model(self) -> ToolBlastRadius:
        """This tool's row of status.blastRadius.tools."""
        return ToolBlastRadius(
            agent=self.agent,
            tool=self.tool,
            actions=self.actions,
            subjects=self.subjects,
            compensation=self.compensation,
            reversible=self.reversible,
            **({"amounts": dict(self.amounts)} if self.amounts else {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return self.to_model().to_status()


@dataclass(frozen=True)
class BlastRadiusSummary:
    start: datetime
    end: datetime | None
    tools: tuple[ToolBlast, ...] = ()
    subjects: int = 0
    window_source: str = ""

    @property
    def actions(self) -> int:
        return sum(t.actions for t in self.tools)

    @property
    def reversible(self) -> int:
        return sum(t.actions for t in self.tools if t.reversible)

    @property
    def irreversible(self) -> int:
        return self.actions - self.reversible

    def by_tool(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tools:
            out[t.tool] = out.get(t.tool, 0) + t.actions
        return dict(sorted(out.items()))

    def amounts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tools:
            for unit, total in t.amounts.items():
                out[unit] = out.get(unit, 0) + total
        return dict(sorted(out.items()))

    def describe(self) -> str:
        """One line for the timeline: ``312 actions (issue_refund 310, send_email 2) on 47 subjects; ...``."""
        if not self.actions:
            return "no action in the window"
        tools = ", ".join(f"{tool} {n}" for tool, n in self.by_tool().items())
        amounts = "; ".join(f"{total} {unit}".strip() for unit, total in self.amounts().items())
        text = (
            f"{self.actions} actions ({tools}) on {self.subjects} subjects; {self.reversible} reversible, "
            f"{self.irreversible} irreversible"
        )
        return text + (f"; amounts: {amounts}" if amounts else "")


def compute_blast_radius(
    start: datetime,
    end: datetime | None,
    counts: Mapping[str, AgentCounts],
    declarations: Mapping[str, Mapping[str, Declaration]],
    *,
    window_source: str = "",
) -> BlastRadiusSummary:
    """Each agent's ledger counts with each tool's compensation from its bundle (a tool the bundle does not
    declare as a write tool counts as irreversible: nothing is declared to undo it)."""
    tools: list[ToolBlast] = []
    subjects = 0
    for agent in sorted(counts):
        radius = counts[agent]
        subjects += radius.subjects
        decls = declarations.get(agent, {})
        for entry in sorted(radius.tools, key=lambda t: t.tool):
            decl = decls.get(entry.tool)
            tools.append(
                ToolBlast(
                    agent=agent,
                    tool=entry.tool,
                    actions=entry.actions,
                    subjects=entry.subjects,
                    amounts=dict(entry.amounts),
                    compensation=decl.type if decl is not None else NONE,
                )
            )
    return BlastRadiusSummary(start=start, end=end, tools=tuple(tools), subjects=subjects, window_source=window_source)


@dataclass(frozen=True)
class SubjectRow:
    subject: str
    agent: str
    tool: str
    actions: int


def subject_table(rows: Iterable[SubjectRow]) -> list[dict[str, Any]]:
    """Rows for ``blast-radius --subjects``: one per subject, its tools and action counts."""
    grouped: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (r.subject, r.agent, r.tool)):
        entry = grouped.setdefault(row.subject, {"subject": row.subject, "actions": 0, "tools": {}})
        entry["actions"] += row.actions
        entry["tools"][row.tool] = entry["tools"].get(row.tool, 0) + row.actions
    return list(grouped.values())


@dataclass(frozen=True)
class IncidentWindow:
    start: datetime
    end: datetime | None
    source: str  # where the start came from


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def incident_window(incident: Mapping[str, Any]) -> IncidentWindow:
    """The window an incident's blast radius covers: from ``spec.window.start`` when set, else from the first
    detection signal (``status.detection.firstSeen``), else from when the incident was opened; to
    ``spec.window.end`` when set, else to the first time containment was observed (the timeline's first
    ``Contained``), else open (up to now)."""
    spec = incident.get("spec") or {}
    status = incident.get("status") or {}
    window = spec.get("window") or {}
    start = _parse(window.get("start"))
    source = "spec.window.start"
    if start is None:
        start = _parse((status.get("detection") or {}).get("firstSeen"))
        source = "the first detection signal"
    if start is None:
        start = _parse((incident.get("metadata") or {}).get("creationTimestamp"))
        source = "the incident's creation"
    if start is None:
        raise ValueError("the incident has neither spec.window.start nor a creation time")
    end = _parse(window.get("end"))
    if end is None:
        contained = [e for e in status.get("timeline") or [] if e.get("event") == "Contained"]
        end = min((t for t in (_parse(e.get("time")) for e in contained) if t is not None), default=None)
    return IncidentWindow(start=start, end=end, source=source)
