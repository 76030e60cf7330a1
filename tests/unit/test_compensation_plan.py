"""The compensation planner and the blast radius (pure): which actions a plan undoes, how, and its hash."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tourniquet.domain.blastradius import SubjectRow, compute_blast_radius, subject_table
from tourniquet.domain.compensation import (
    Declaration,
    PlanError,
    Selector,
    declarations_from_bundle,
    duplicate_keys,
    plan_compensation,
)
from tourniquet.models import Bundle
from tourniquet.models.bundle import CompensationType
from tourniquet.shared import compensation as shared

T0 = datetime(2026, 11, 21, 3, 0, tzinfo=UTC)
AGENT = "refund-agent"


@dataclass(frozen=True)
class Act:
    idempotency_key: str
    minute: float
    subjects: tuple[str, ...] = ()
    tool: str = "issue_refund"
    outcome: str = "ok"
    bundle_revision: int | None = 1
    agent: str = AGENT

    @property
    def time(self) -> datetime:
        return T0 + timedelta(minutes=self.minute)


def bundle(**overrides: Any) -> Bundle:
    tools = [
        {"name": "lookup_order", "sideEffects": "read"},
        {"name": "issue_refund", "compensation": {"type": "reversal", "tool": "reverse_refund"}},
        {"name": "reverse_refund"},
        {
            "name": "send_email",
            "compensation": {"type": "mitigation", "steps": ["Send the correction email", "Log it on the ticket"]},
        },
        {"name": "close_ticket", "compensation": {"type": "none", "reason": "tickets reopen themselves"}},
        {"name": "tag_customer"},
    ]
    return Bundle.model_validate(
        {
            "model": {"provider": "openai", "name": "gpt-5", "version": "2026-08-06"},
            "prompt": {"template": "You are the refund assistant."},
            "tools": overrides.get("tools", tools),
        }
    )


DECLS = {AGENT: declarations_from_bundle(bundle())}
ALL_TOOLS = {AGENT: [t.name for t in bundle().tools]}

WINDOW = [
    Act("old", -30, ("order:1", "customer:1")),
    Act("r1", 1, ("order:2", "customer:1")),
    Act("r2", 2, ("order:2", "customer:1")),  # a duplicate of r1
    Act("r3", 3, ("order:1", "customer:1")),  # a duplicate of "old", before the window
    Act("r4", 4, ("order:3", "customer:2"), bundle_revision=2),
    Act("r5", 5, ("order:3", "customer:2"), bundle_revision=2),  # a duplicate of r4
    Act("r6", 5.5, ("order:4", "customer:2"), outcome="error"),
    Act("r7", 5.6, ("order:4", "customer:2")),  # not a duplicate: the earlier try failed
    Act("r8", 5.7, ()),  # no subject: never a duplicate
    Act("e1", 6, ("customer:1",), tool="send_email"),
    Act("e2", 6.5, ("customer:1",), tool="send_email"),  # a duplicate email
    Act("t1", 7, ("ticket:9",), tool="close_ticket"),
    Act("after", 20, ("order:2",)),
]


def keys(
    selector: Selector, actions: list[Act] = WINDOW, earlier: set[tuple[str, str, str]] | None = None
) -> list[str]:
    in_window = [a for a in actions if selector.in_window(a.time)]
    if earlier is None:
        earlier = {(a.agent, a.tool, a.subjects[0]) for a in actions if a.time < selector.start and a.outcome == "ok"
                   and a.subjects}
    plan = plan_compensation(selector, in_window, DECLS, earlier=earlier, all_tools=ALL_TOOLS)
    return [i.idempotency_key for i in plan.items]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (Selector(T0, T0 + timedelta(minutes=10)), ["r1", "r2", "r3", "r4", "r5", "r7", "r8", "e1", "e2", "t1"]),
        (Selector(T0, T0 + timedelta(minutes=10), duplicates_only=True), ["r2", "r3", "r5", "e2"]),
        (Selector(T0, T0 + timedelta(minutes=10), tools=("issue_refund",), duplicates_only=True), ["r2", "r3", "r5"]),
        (Selector(T0, T0 + timedelta(minutes=10), subjects=("customer:2",)), ["r4", "r5", "r7"]),
        (Selector(T0, T0 + timedelta(minutes=10), bundle_revisions=(2,)), ["r4", "r5"]),
        (Selector(T0 + timedelta(minutes=2), T0 + timedelta(minutes=3)), ["r2"]),
        # r1 is before this window: r2 is still its duplicate (beyond every anchor)
        (
            Selector(T0 + timedelta(minutes=2), T0 + timedelta(minutes=10), duplicates_only=True),
            ["r2", "r3", "r5", "e2"],
        ),
        (Selector(T0, None, tools=("issue_refund",), duplicates_only=True), ["r2", "r3", "r5", "after"]),
    ],
)
def test_the_selector_picks_the_actions(selector: Selector, expected: list[str]) -> None:
    earlier = {(AGENT, "issue_refund", "order:1")}
    if selector.start > T0 + timedelta(minutes=1):
        earlier.add((AGENT, "issue_refund", "order:2"))  # what the ledger says about r1, before that window
    assert keys(selector, earlier=earlier) == expected


def test_each_action_gets_its_tool_s_compensation_and_humans_get_a_checklist() -> None:
    plan = plan_compensation(Selector(T0, T0 + timedelta(minutes=10)), WINDOW, DECLS, all_tools=ALL_TOOLS)

    assert {i.idempotency_key: (i.type, i.compensating_tool) for i in plan.items if i.tool != "issue_refund"} == {
        "e1": ("mitigation", None),
        "e2": ("mitigation", None),
        "t1": ("none", None),
    }
    assert plan.items[0].compensating_tool == "reverse_refund"
    assert plan.counts() == {"actions": 10, "planned": 7, "irreversible": 2, "skipped": 1}
    assert [c.to_dict() for c in plan.checklist] == [
        {"agent": AGENT, "tool": "close_ticket", "actions": 1, "type": "none", "reason": "tickets reopen themselves"},
        {"agent": AGENT, "tool": "send_email", "actions": 2, "type": "mitigation",
         "steps": ["Send the correction email", "Log it on the ticket"]},
    ]
    assert plan.summary()["byTool"] == {"close_ticket": 1, "issue_refund": 7, "send_email": 2}


def test_the_hash_names_the_plan_and_changes_with_it() -> None:
    selector = Selector(T0, T0 + timedelta(minutes=10), duplicates_only=True)
    plan = plan_compensation(selector, WINDOW, DECLS)
    shuffled = WINDOW[:]
    random.Random(4).shuffle(shuffled)

    assert plan_compensation(selector, shuffled, DECLS).hash == plan.hash
    assert plan_compensation(Selector.from_dict(selector.to_dict()), WINDOW, DECLS).hash == plan.hash
    one_more = [*WINDOW, Act("r9", 9, ("order:2",))]
    assert plan_compensation(selector, one_more, DECLS).hash != plan.hash
    other_decls = {AGENT: {**DECLS[AGENT], "send_email": Declaration(type="none")}}
    assert plan_compensation(selector, WINDOW, other_decls).hash != plan.hash
    assert plan_compensation(Selector(T0, T0 + timedelta(minutes=10)), WINDOW, DECLS).hash != plan.hash


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        (Selector(T0, tools=("issue_refunds",)), "unknown tool issue_refunds in the selector; the agents' write tools"),
        (Selector(T0, tools=("lookup_order",)), "lookup_order in the selector is a read tool"),
    ],
)
def test_a_selector_naming_a_tool_the_agent_lacks_is_refused(selector: Selector, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        plan_compensation(selector, WINDOW, DECLS, all_tools=ALL_TOOLS)


def test_a_reversal_by_a_tool_the_bundle_does_not_declare_is_refused() -> None:
    tools = [{"name": "issue_refund", "compensation": {"type": "reversal", "tool": "undo_refund"}}]
    with pytest.raises(PlanError, match="reversal by undo_refund, which the bundle does not declare"):
        declarations_from_bundle(bundle(tools=tools))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "needs the window's start"),
        ({"start": "yesterday"}, "not an RFC 3339 time"),
        ({"start": "2026-11-21T03:00:00"}, "time zone"),
        ({"start": "2026-11-21T03:00:00Z", "end": "2026-11-21T02:00:00Z"}, "ends .* before it starts"),
        ({"start": "2026-11-21T03:00:00Z", "tool": ["x"]}, "unknown selector field"),
        ({"start": "2026-11-21T03:00:00Z", "bundleRevisions": ["7"]}, "list of revision numbers"),
    ],
)
def test_a_bad_selector_says_what_to_fix(data: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        Selector.from_dict(data)


def test_mitigation_without_steps_falls_back_to_its_description_and_an_undeclared_tool_is_none() -> None:
    tools = [
        {"name": "send_email", "compensation": {"type": "mitigation", "description": "send a correction"}},
        {"name": "tag_customer"},
        {"name": "lookup_order", "sideEffects": "read"},
    ]
    decls = declarations_from_bundle(bundle(tools=tools))
    assert decls["send_email"].steps == ("send a correction",)
    assert decls["tag_customer"].type == "none"
    assert "lookup_order" not in decls


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 59),  # minute
            st.sampled_from(["issue_refund", "send_email"]),
            st.integers(0, 6),  # primary subject
            st.sampled_from(["ok", "ok", "ok", "error"]),
        ),
        max_size=60,
    ),
    st.integers(0, 60),
    st.integers(0, 60),
)
def test_duplicates_only_takes_exactly_the_repeats_inside_the_window(
    raw: list[tuple[int, str, int, str]], a: int, b: int
) -> None:
    """Oracle: an action is taken iff it is in the window, succeeded, and an earlier successful action (by time,
    then key) of the same tool had the same primary subject."""
    start, end = T0 + timedelta(minutes=min(a, b)), T0 + timedelta(minutes=max(a, b))
    actions = [Act(f"k{i:03}", m, (f"order:{s}", "customer:0"), tool, outcome) for i, (m, tool, s, outcome) in
               enumerate(raw)]
    selector = Selector(start, end, duplicates_only=True)

    def order(x: Act) -> tuple[datetime, str]:
        return (x.time, x.idempotency_key)

    expected = sorted(
        (
            x
            for x in actions
            if x.outcome == "ok"
            and selector.in_window(x.time)
            and any(
                y.outcome == "ok" and y.tool == x.tool and y.subjects[0] == x.subjects[0] and order(y) < order(x)
                for y in actions
            )
        ),
        key=order,
    )
    assert keys(selector, actions) == [x.idempotency_key for x in expected]
    assert duplicate_keys([x for x in actions if selector.in_window(x.time)]) <= {x.idempotency_key for x in actions}


@dataclass(frozen=True)
class Counts:
    tool: str
    actions: int
    subjects: int
    amounts: dict[str, int]
    first: datetime | None = None
    last: datetime | None = None


@dataclass(frozen=True)
class AgentCounts:
    tools: tuple[Counts, ...]
    subjects: int


def test_the_blast_radius_says_what_can_be_reversed() -> None:
    counts = {
        AGENT: AgentCounts(
            (
                Counts("issue_refund", 310, 47, {"USD cents": 775000}),
                Counts("send_email", 2, 2, {}),
                Counts("retired_tool", 1, 1, {}),
            ),
            subjects=47,
        )
    }
    radius = compute_blast_radius(T0, None, counts, DECLS)

    assert (radius.actions, radius.reversible, radius.irreversible, radius.subjects) == (313, 310, 3, 47)
    assert radius.by_tool() == {"issue_refund": 310, "retired_tool": 1, "send_email": 2}
    assert radius.describe() == (
        "313 actions (issue_refund 310, retired_tool 1, send_email 2) on 47 subjects; 310 reversible, "
        "3 irreversible; amounts: 775000 USD cents"
    )
    assert radius.tools[0].to_dict() == {
        "agent": AGENT, "tool": "issue_refund", "actions": 310, "subjects": 47, "compensation": "reversal",
        "reversible": True, "amounts": {"USD cents": 775000},
    }
    assert compute_blast_radius(T0, None, {}, DECLS).describe() == "no action in the window"


def test_the_subject_table_lists_each_subject_once_with_its_tools() -> None:
    rows = [
        SubjectRow("order:1", AGENT, "issue_refund", 2),
        SubjectRow("customer:1", AGENT, "issue_refund", 2),
        SubjectRow("customer:1", AGENT, "send_email", 1),
    ]
    assert subject_table(rows) == [
        {"subject": "customer:1", "actions": 3, "tools": {"issue_refund": 2, "send_email": 1}},
        {"subject": "order:1", "actions": 2, "tools": {"issue_refund": 2}},
    ]


def test_the_plans_compensation_types_are_the_crds() -> None:
    # The plan the agent's compensation worker computes does not import the models: its types must stay theirs.
    assert {shared.REVERSAL, shared.MITIGATION, shared.NONE} == {t.value for t in CompensationType}


def test_a_bundle_as_mounted_declares_what_its_model_declares() -> None:
    tools = [
        {"name": "issue_refund", "compensation": {"type": "reversal", "tool": "reverse_refund"}},
        {"name": "reverse_refund"},
        {"name": "lookup", "sideEffects": "read"},
        {"name": "send_email", "compensation": {"type": "mitigation", "description": "Send a correction"}},
        {"name": "close_ticket", "compensation": {"description": "tickets reopen themselves"}},
    ]
    model = {"provider": "openai", "name": "gpt-5", "version": "2026-08-06"}
    raw = {"model": model, "prompt": {"template": "t"}, "tools": tools}
    assert shared.declarations_from_tools(tools) == declarations_from_bundle(Bundle.model_validate(raw))
    assert "lookup" not in shared.declarations_from_tools(tools)
