"""Regression cases from an incident (pure): the window, the implicated revision, the inputs, the Git export."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tourniquet.domain import regression

NOW = datetime(2026, 11, 21, 4, 0, tzinfo=UTC)


def incident(**spec: object) -> dict:
    return {
        "metadata": {"name": "dup-refunds", "creationTimestamp": "2026-11-21T03:12:00Z"},
        "spec": {"agents": ["refund-agent"], **spec},
        "status": {
            "timeline": [
                {"time": "2026-11-21T03:12:00.5Z", "event": "Opened"},
                {"time": "2026-11-21T03:12:01.25Z", "event": "Contained"},
                {"time": "2026-11-21T03:20:00Z", "event": "RolledBack", "message": "rolled back from revision 7 to 6"},
            ]
        },
    }


EVIDENCE = {
    "agent.json": json.dumps(
        {"refund-agent": {"status": {"bundle": {"revision": 7, "activeSince": "2026-11-21T02:00:00Z"}}}}
    ),
    "logs.txt": "==> worker-1 <==\nstarted\ncalling issue_refund order=123\nlookup_order 123\n"
    "==> worker-2 <==\ncalling issue_refund order=124\n",
}


def test_the_window_runs_from_the_best_known_start_to_containment() -> None:
    start, end = regression.incident_window(incident(), EVIDENCE, "refund-agent", NOW)
    assert (start, end) == (datetime(2026, 11, 21, 2, 0, tzinfo=UTC), datetime(2026, 11, 21, 3, 12, 1, 250000, UTC))
    start, _ = regression.incident_window(incident(window={"start": "2026-11-21T03:02:00Z"}), EVIDENCE, "x", NOW)
    assert start == datetime(2026, 11, 21, 3, 2, tzinfo=UTC)
    start, end = regression.incident_window({"metadata": {"creationTimestamp": "2026-11-21T03:12:00Z"}}, {}, "x", NOW)
    assert (start, end) == (datetime(2026, 11, 21, 3, 12, tzinfo=UTC), NOW)


def test_the_implicated_revision_is_what_the_rollback_took_out_else_what_ran_when_the_evidence_was_captured() -> None:
    assert regression.implicated_revision(incident(), EVIDENCE, "refund-agent") == 7
    assert regression.implicated_revision(incident(), {}, "refund-agent") == 7
    assert regression.implicated_revision({"status": {}}, {}, "refund-agent") is None
    assert regression.implicated_revision({"status": {}}, EVIDENCE, "refund-agent") == 7
    # The incident's own rollback ran in the pass that captured the evidence: the evidence already shows revision 6.
    after_rollback = EVIDENCE | {"agent.json": json.dumps({"refund-agent": {"status": {"bundle": {"revision": 6}}}})}
    assert regression.implicated_revision(incident(), after_rollback, "refund-agent") == 7


def test_inputs_from_evidence_are_the_log_lines_naming_a_write_tool() -> None:
    inputs = regression.inputs_from_evidence(EVIDENCE, ["issue_refund"])
    assert inputs == [
        {"tool": "issue_refund", "evidence": "worker-1: calling issue_refund order=123"},
        {"tool": "issue_refund", "evidence": "worker-2: calling issue_refund order=124"},
    ]
    # No line names a write tool: the last lines, for a person to edit.
    assert regression.inputs_from_evidence(EVIDENCE, ["send_email"]) == [
        {"evidence": "started\ncalling issue_refund order=123\nlookup_order 123\ncalling issue_refund order=124"}
    ]
    assert regression.inputs_from_evidence({}, ["issue_refund"]) == []


def test_inputs_from_the_ledger_sample_the_earliest_actions_with_a_bounded_trace() -> None:
    actions = [
        regression.ActionRecord(
            f"k{i}", "issue_refund", {"order_id": str(i)}, NOW + timedelta(seconds=-i), "t", ("order:1",)
        )
        for i in range(30)
    ]
    big = regression.ActionRecord("big", "issue_refund", {}, NOW - timedelta(hours=1), trace={"modelInput": "x" * 9000})
    inputs = regression.inputs_from_actions([*actions, big], sample=3)
    assert [i["action"] for i in inputs] == ["big", "k29", "k28"]
    assert inputs[0]["trace"]["truncated"] is True and len(json.dumps(inputs[0]["trace"])) <= 4200
    assert inputs[1] == {
        "tool": "issue_refund",
        "arguments": {"order_id": "29"},
        "action": "k29",
        "task": "t",
        "subjects": ["order:1"],
        "time": (NOW - timedelta(seconds=29)).isoformat(),
    }


def test_a_case_exports_without_status_or_server_metadata() -> None:
    case = regression.build_case(
        "dup-refunds",
        "support",
        agent="refund-agent",
        incident="dup-refunds",
        revision=7,
        source="ledger",
        inputs=[],
        expected={"description": "once"},
    )
    stored = {
        **case,
        "metadata": {**case["metadata"], "uid": "u", "resourceVersion": "9", "managedFields": [{}]},
        "status": {"conditions": []},
    }
    exported = regression.export_case(stored)
    assert exported["metadata"] == {
        "name": "dup-refunds",
        "labels": {"tourniquet.dev/agent": "refund-agent", "tourniquet.dev/incident": "dup-refunds"},
    }
    assert "status" not in exported and exported["spec"]["revision"] == 7
    assert regression.case_name("dup-refunds", "refund-agent", 1) == "dup-refunds"
    assert regression.case_name("dup-refunds", "refund-agent", 2) == "dup-refunds-refund-agent"
