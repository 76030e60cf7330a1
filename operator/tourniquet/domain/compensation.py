"""The operator's side of compensation plans: the declarations its Bundle model gives, and a checklist entry as
the incident's status shows it. The plan itself (selector, declarations, planning, hash) is
:mod:`tourniquet.shared.compensation`, which the compensation worker in the agent's image computes alike; its
names are importable from here too."""

from __future__ import annotations

from tourniquet.models import Bundle
from tourniquet.models.agentincident import ChecklistItem

# The plan, shared with the agent-side runtime: the operator's modules import it from here.
from tourniquet.shared.compensation import (
    MITIGATION,
    NONE,
    PLAN_FORMAT,
    REVERSAL,
    UNDECLARED_REASON,
    ChecklistEntry,
    CompensationPlan,
    Declaration,
    PlanError,
    PlanItem,
    PlannedAction,
    Selector,
    check_selector,
    declarations_from_tools,
    duplicate_keys,
    plan_compensation,
    plan_hash,
)

__all__ = [
    "MITIGATION",
    "NONE",
    "PLAN_FORMAT",
    "REVERSAL",
    "UNDECLARED_REASON",
    "ChecklistEntry",
    "CompensationPlan",
    "Declaration",
    "PlanError",
    "PlanItem",
    "PlannedAction",
    "Selector",
    "check_selector",
    "checklist_item",
    "declarations_from_bundle",
    "duplicate_keys",
    "plan_compensation",
    "plan_hash",
]


def declarations_from_bundle(bundle: Bundle) -> dict[str, Declaration]:
    """Each write tool's compensation as the bundle declares it (a tool without one: ``none``). Read tools
    have nothing to compensate and are left out. A reversal naming a tool the bundle does not declare
    raises :class:`PlanError`."""
    return declarations_from_tools(bundle.model_dump(mode="json", by_alias=True)["tools"])


def checklist_item(entry: ChecklistEntry) -> ChecklistItem:
    """The entry as status.compensation.plan.checklist shows it (the same JSON as ``entry.to_dict()``)."""
    return ChecklistItem(
        agent=entry.agent,
        tool=entry.tool,
        actions=entry.actions,
        type=entry.type,
        **({"steps": list(entry.steps)} if entry.steps else {}),
        **({"reason": entry.reason} if entry.reason else {}),
    )
