"""The postmortem (pure): the bundle diff, the document's sections, keeping what an earlier one recorded."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from tests.conftest import example

from tourniquet.domain import postmortem as pm

BUNDLE = example()[1]["spec"]["bundle"]


def changed_bundle() -> dict[str, Any]:
    bundle = copy.deepcopy(BUNDLE)
    bundle["prompt"]["template"] = bundle["prompt"]["template"].replace("refund", "reimburse", 1)
    bundle["tools"][0]["schema"] = {**bundle["tools"][0].get("schema", {}), "maxProperties": 3}
    return bundle


def test_the_diff_is_a_unified_diff_per_part_and_names_what_changed() -> None:
    diff = pm.bundle_diff(BUNDLE, changed_bundle(), 1, 2)
    assert diff["changed"] == ["prompt", "tools"]
    assert diff["model"] == ""
    prompt = diff["prompt"]
    assert prompt.startswith("--- revision-1/prompt\n+++ revision-2/prompt\n@@ ")
    removed = [line for line in prompt.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line for line in prompt.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert len(removed) == 1 and len(added) == 1 and "reimburse" in added[0] and "refund" in removed[0]
    assert '+      "maxProperties": 3,' in diff["tools"]


@pytest.mark.parametrize(
    ("facts", "note"),
    [
        (pm.RevisionFacts("a", None), "the revision the agent ran is not known"),
        (pm.RevisionFacts("a", 2, BUNDLE), "no revision other than 2 is known good"),
        (pm.RevisionFacts("a", 2, None, 1, BUNDLE), "revision 2's bundle ConfigMap is no longer stored"),
        (pm.RevisionFacts("a", 2, BUNDLE, 1, BUNDLE), "revision 2 against last-known-good 1: identical bundles"),
        (pm.RevisionFacts("a", 2, changed_bundle(), 1, BUNDLE), "prompt, tools changed"),
    ],
)
def test_the_revision_section_says_why_there_is_no_diff(facts: pm.RevisionFacts, note: str) -> None:
    assert note in pm.revision_section(facts)["note"]


def incident(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "dup-refunds",
            "namespace": "shop",
            "generation": 2,
            "creationTimestamp": "2026-11-21T03:05:00Z",
        },
        "spec": {"agents": ["refund-agent"], "severity": "SEV1", "class": "financial", "resolved": True},
        "status": {
            "observedGeneration": 2,
            "conditions": [{"type": "Resolved", "status": "True"}],
            "timings": {
                "startedAt": "2026-11-21T03:05:00.000000Z",
                "detectedSeconds": 42.0,
                "containedSeconds": 0.8,
                "resolvedSeconds": 900.0,
                "levers": {"refund-agent/drain": 0.8},
            },
            "timeline": [
                {"time": "2026-11-21T03:04:18Z", "event": "Detected", "message": "rule RefundStorm"},
                {"time": "2026-11-21T03:05:00.8Z", "event": "Contained", "message": "every lever applied"},
            ],
            "levers": [{"agent": "refund-agent", "name": "drain", "state": "Released", "detail": "2 → 0"}],
            "detection": {"fingerprint": "f", "rule": "RefundStorm", "firstSeen": "2026-11-21T03:04:18Z"},
            "evidence": {"configMap": "dup-refunds-evidence", "bytes": 9000, "capturedAt": "2026-11-21T03:05:00Z"},
            **status,
        },
    }


def document(**kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "revisions": [pm.RevisionFacts("refund-agent", 2, changed_bundle(), 1, BUNDLE)],
        "ledger": {
            "refund-agent": pm.LedgerFacts("none", "no ledger configured (spec.ledger of refund-agent is unset)")
        },
        "cases": [],
        "now": "2026-11-21T04:00:00Z",
    }
    args.update(kwargs)
    return pm.build_postmortem(incident(), **args)


def test_every_section_comes_from_the_incident_and_the_markdown_shows_it() -> None:
    doc = document()
    assert (doc["severity"], doc["class"], doc["final"]) == ("SEV1", "financial", True)
    assert doc["summary"] == "SEV1 financial incident on refund-agent"
    timeline = doc["timeline"]
    assert (timeline["timeToDetectSeconds"], timeline["timeToContainSeconds"], timeline["timeToResolveSeconds"]) == (
        42.0,
        0.8,
        900.0,
    )
    assert [e["offset"] for e in timeline["entries"]] == ["-42.00s", "+0.80s"]
    assert doc["levers"][0]["appliedSeconds"] == 0.8 and doc["levers"][0]["detail"] == "2 → 0"
    assert doc["ledger"]["refund-agent"]["detail"].startswith("no ledger configured")
    assert [q["question"] for q in doc["questions"]] == [
        "What did the agent see?",
        "Why did it choose what it did?",
        "Why did detection take as long as it did?",
        "Which guardrail would have stopped it?",
        "What test closes it?",
    ]
    assert "none recorded yet: kubectl tourniquet regression dup-refunds" in doc["questions"][4]["record"]
    text = pm.render_markdown(doc)
    for heading in (
        "# Postmortem: dup-refunds (final)",
        "## Summary",
        "## Timeline",
        "- Time to detect: 42.00 s",
        "## Levers",
        "## Blast radius and compensation",
        "no ledger configured",
        "## The implicated revision against last-known-good",
        "```diff\n--- revision-1/prompt",
        "## Decision traces",
        "## Review questions",
    ):
        assert heading in text, heading


def test_the_ledger_fills_blast_radius_compensation_and_traces() -> None:
    facts = pm.LedgerFacts(
        "read",
        "from the ledger x: 3 actions",
        blast_radius={"start": "s", "actions": 3, "subjects": 2, "tools": [{"tool": "issue_refund", "actions": 3}]},
        compensation={"done": 1},
        traces=[pm.trace_entry("k1", "issue_refund", {"order_id": "o1"}, None, "t1", {"modelOutput": {"v": 1}})],
        sampled_of=3,
    )
    doc = document(ledger={"refund-agent": facts}, cases=[{"metadata": {"name": "dup-refunds"}}])
    assert doc["ledger"]["refund-agent"]["compensation"] == {"done": 1}
    assert doc["traces"][0]["trace"] == {"modelOutput": '{"v": 1}'}
    assert doc["questions"][0]["record"] == "1 decision trace(s) of 3 implicated action(s) below"
    assert doc["questions"][4]["record"] == "regression case(s): dup-refunds"
    text = pm.render_markdown(doc)
    assert "| issue_refund | 3 |" in text and "Compensation for this incident: 1 done." in text


def test_a_rewrite_keeps_what_the_earlier_document_recorded() -> None:
    first = document()
    pruned = document(revisions=[pm.RevisionFacts("refund-agent", 2, None, 1, BUNDLE)])  # revision 2 pruned since
    merged = pm.keep_fields(first, pruned)
    assert merged["revisions"][0]["diff"] == first["revisions"][0]["diff"]
    edited = copy.deepcopy(pruned)
    edited["summary"] = "Refunds paid twice"
    edited["levers"] = []
    merged = pm.keep_fields(first, edited)
    assert merged["summary"] == "Refunds paid twice" and merged["levers"] == first["levers"]


def test_sampling_spreads_over_the_window() -> None:
    keys = [f"k{i}" for i in range(100)]
    assert pm.sample_actions(keys, 5) == ["k0", "k25", "k50", "k74", "k99"]
    assert pm.sample_actions(keys[:3], 5) == keys[:3]


@pytest.mark.parametrize(
    ("change", "wanted"),
    [
        ({}, True),
        ({"status": {"observedGeneration": 1, "conditions": [{"type": "Resolved", "status": "True"}]}}, False),
        ({"status": {"observedGeneration": 2, "conditions": []}}, False),
        ({"status": {"observedGeneration": 2}, "metadata": {"annotations": {pm.ANNOTATION_REQUESTED: "t1"}}}, True),
        ({"status": {}, "metadata": {"annotations": {pm.ANNOTATION_REQUESTED: "t1"}}}, False),  # not acted on yet
        ({"spec": {"drill": True}}, False),
    ],
)
def test_a_postmortem_is_written_once_resolved_or_asked_for(change: dict[str, Any], wanted: bool) -> None:
    body = incident()
    for key, value in change.items():
        body[key] = {**body[key], **value} if key != "status" else value
    assert (pm.source_key(body) is not None) is wanted


def test_a_ledger_unreadable_later_keeps_what_was_read_and_says_so() -> None:
    read = pm.LedgerFacts(
        "read",
        "from the ledger x: 3 actions",
        blast_radius={"start": "s", "actions": 3, "subjects": 2, "tools": []},
        compensation={"done": 1},
        traces=[pm.trace_entry("k1", "issue_refund", {}, None, None, {"modelOutput": "refund"})],
        sampled_of=3,
    )
    first = document(ledger={"refund-agent": read})
    later = document(ledger={"refund-agent": pm.LedgerFacts("unreadable", "the operator was not given it")})
    merged = pm.merge_postmortem(first, later)
    kept = merged["ledger"]["refund-agent"]
    assert kept["blastRadius"] == first["ledger"]["refund-agent"]["blastRadius"] and kept["compensation"] == {"done": 1}
    assert kept["detail"].endswith("(as read at 2026-11-21T04:00:00Z; now: the operator was not given it)")
    assert merged["traces"] == first["traces"]
    assert merged["questions"][0]["record"] == "1 decision trace(s) of 3 implicated action(s) below"


def test_a_huge_diff_is_cut_and_says_so() -> None:
    huge = copy.deepcopy(BUNDLE)
    huge["prompt"]["template"] = "\n".join(f"rule {i}: refund carefully" for i in range(20000))
    diff = pm.bundle_diff(BUNDLE, huge, 1, 2)["prompt"]
    assert diff.startswith("--- revision-1/prompt\n+++ revision-2/prompt\n")
    assert len(diff) < pm.DIFF_LIMIT + 200
    *_, note = diff.rstrip("\n").split("\n")
    whole = int(note.split("cut here: ")[1].split(" characters")[0])
    assert whole > pm.DIFF_LIMIT and note.endswith(f"characters in all, {pm.DIFF_LIMIT} kept)")
