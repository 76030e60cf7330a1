"""What the compensation worker is asked: the agent's compensators (registered with @compensator), the request
(which actions, how each tool is compensated) and the plan read from the ledger; the worker's exit codes and
errors."""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tourniquet.runtime.ledger import (
    Action,
    LedgerError,
    SqlLedger,
)
from tourniquet.shared.compensation import (
    CompensationPlan,
    Declaration,
    PlanError,
    Selector,
    declarations_from_tools,
    plan_compensation,
)

log = logging.getLogger(__package__)  # the package's name: tourniquet.runtime.compensate


Compensator = Callable[[Action], Any]


F = TypeVar("F", bound=Compensator)


DETAIL_LIMIT = 1000


# tool -> the function that undoes its actions; filled by @compensator at import of the agent's modules.
COMPENSATORS: dict[str, Compensator] = {}


class Irreversible(Exception):
    """Raised by a compensator: this action cannot be undone after all; recorded ``irreversible``."""


def compensator(tool: str, registry: dict[str, Compensator] | None = None) -> Callable[[F], F]:
    """Register the function that undoes ``tool``'s actions: it gets the original :class:`Action`."""

    def register(fn: F) -> F:
        target = COMPENSATORS if registry is None else registry
        if tool in target and target[tool] is not fn:
            raise ValueError(f"a compensator for {tool} is already registered ({target[tool].__qualname__})")
        target[tool] = fn
        return fn

    return register


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1
    INVALID = 2
    PLAN_CHANGED = 3
    LEDGER_UNAVAILABLE = 4
    LEASE = 5


class PlanChanged(PlanError):
    """The plan read from the ledger is not the approved one; nothing was executed."""


class LeaseUnavailable(LedgerError):
    """Another worker holds the incident's lease, or this one lost it."""


@dataclass(frozen=True)
class CompensationRequest:
    """What to compensate (the selector) and how (each agent's declarations): the plan's input."""

    incident: str
    selector: Selector
    declarations: dict[str, dict[str, Declaration]]
    all_tools: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "incident": self.incident,
            "selector": self.selector.to_dict(),
            "agents": {
                agent: {
                    "tools": sorted(self.all_tools.get(agent, decls)),
                    "compensation": {tool: decl.to_dict() for tool, decl in sorted(decls.items())},
                }
                for agent, decls in sorted(self.declarations.items())
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompensationRequest:
        try:
            agents = data["agents"]
            declarations = {
                agent: {tool: Declaration.from_dict(d) for tool, d in (spec.get("compensation") or {}).items()}
                for agent, spec in agents.items()
            }
            all_tools = {agent: list(spec.get("tools") or ()) for agent, spec in agents.items()}
            return cls(
                incident=str(data["incident"]),
                selector=Selector.from_dict(data["selector"]),
                declarations=declarations,
                all_tools=all_tools,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise PlanError(
                f"a compensation request needs incident, selector and agents.<name>.compensation; {exc!r}"
            ) from exc

    @classmethod
    def from_bundles(
        cls, incident: str, bundles: Mapping[str, Mapping[str, Any]], selector: Selector
    ) -> CompensationRequest:
        """From each agent's bundle in its JSON form (as mounted, or as spec.bundle holds it)."""
        declarations: dict[str, dict[str, Declaration]] = {}
        all_tools: dict[str, list[str]] = {}
        for agent, bundle in bundles.items():
            tools = bundle.get("tools", []) if isinstance(bundle, Mapping) else None
            declarations[agent] = declarations_from_tools(tools)
            all_tools[agent] = [t["name"] for t in tools or ()]
        return cls(incident=incident, selector=selector, declarations=declarations, all_tools=all_tools)


def gather_plan(ledger: SqlLedger, request: CompensationRequest) -> tuple[CompensationPlan, dict[str, Action]]:
    """Read the window's actions from the ledger and plan (pure) over them; the actions by key."""
    selector = request.selector
    actions: list[Action] = []
    earlier: set[tuple[str, str, str]] = set()
    for agent in sorted(request.declarations):
        tools = sorted(request.declarations[agent])
        actions += ledger.actions(agent, selector.start, selector.end, tools=tools)
        if selector.duplicates_only:
            earlier |= {
                (agent, tool, subject)
                for tool, subject in ledger.earlier_primary_subjects(agent, selector.start, selector.end, tools=tools)
            }
    plan = plan_compensation(selector, actions, request.declarations, earlier=earlier, all_tools=request.all_tools)
    return plan, {a.idempotency_key: a for a in actions}
