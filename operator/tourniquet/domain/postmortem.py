"""The postmortem (pure): an incident's facts as one JSON document and its Markdown rendering.

The operator gathers the facts (the incident, its agents' bundle revisions, the ledger when it can read one,
the regression cases) and writes `<incident>-postmortem`: `postmortem.json` and `postmortem.md`. Every
section is filled from what was observed; a section without data says why (no ledger configured, no
known-good revision to compare with). A rewrite never loses a field: what the earlier document held and the
new facts no longer show (a pruned bundle revision, a ledger gone) is kept (:func:`keep_fields`).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tourniquet.domain import names
from tourniquet.domain.conditions import parse_time

ANNOTATION_REQUESTED = f"{names.PREFIX}/postmortem-requested"  # on the incident: write one now (open or not)
ANNOTATION_SOURCE = f"{names.PREFIX}/postmortem-source"  # on the ConfigMap: what it was written from
TRACE_SAMPLE = 5
TRACE_PART_LIMIT = 2048  # characters of one decision-trace part shown
DIFF_LIMIT = 65536  # characters of one part's diff kept: the ConfigMap (1 MiB) holds the document twice


def configmap_name(incident: str) -> str:
    return names._bounded(f"{incident}-postmortem")


def source_key(incident: Mapping[str, Any]) -> str | None:
    """What a postmortem is written from: the incident's generation, whether it is resolved, and the last on-demand
    request. None when none is wanted yet (open and never asked for, or its resolution not yet observed)."""
    meta = incident.get("metadata") or {}
    requested = (meta.get("annotations") or {}).get(ANNOTATION_REQUESTED) or ""
    status = incident.get("status") or {}
    if status.get("observedGeneration") != meta.get("generation"):
        return None  # the operator has not acted on this spec yet: wait for its status
    resolved = any(c.get("type") == "Resolved" and c.get("status") == "True" for c in status.get("conditions") or [])
    if not resolved and not requested:
        return None
    if (incident.get("spec") or {}).get("drill") and not requested:
        return None  # a drill's incident gets no postmortem unless someone asks
    return f"generation={meta.get('generation')};resolved={str(resolved).lower()};requested={requested}"


# ---------------------------------------------------------------- the bundle diff


def _lines(text: str) -> list[str]:
    return [line + "\n" for line in text.splitlines()]


def _unified(old: str, new: str, old_name: str, new_name: str) -> str:
    text = "".join(difflib.unified_diff(_lines(old), _lines(new), old_name, new_name))
    if len(text) <= DIFF_LIMIT:
        return text
    cut = text[:DIFF_LIMIT].rsplit("\n", 1)[0]
    return f"{cut}\n… (the diff is cut here: {len(text)} characters in all, {DIFF_LIMIT} kept)\n"


def _tools_text(bundle: dict[str, Any]) -> str:
    tools = sorted(bundle.get("tools") or [], key=lambda t: str(t.get("name")))
    return json.dumps(tools, indent=2, sort_keys=True, ensure_ascii=False)


def bundle_diff(old: dict[str, Any], new: dict[str, Any], old_revision: int, new_revision: int) -> dict[str, Any]:
    """Model, prompt and tool schemas of `new` against `old`, each a unified diff ("" when unchanged)."""
    parts = {
        "model": (
            json.dumps(old.get("model") or {}, indent=2, sort_keys=True),
            json.dumps(new.get("model") or {}, indent=2, sort_keys=True),
        ),
        "prompt": (
            str((old.get("prompt") or {}).get("template") or ""),
            str((new.get("prompt") or {}).get("template") or ""),
        ),
        "tools": (_tools_text(old), _tools_text(new)),
    }
    diffs = {
        name: _unified(a, b, f"revision-{old_revision}/{name}", f"revision-{new_revision}/{name}")
        for name, (a, b) in parts.items()
    }
    return {"changed": [name for name, text in diffs.items() if text], **diffs}


@dataclass
class RevisionFacts:
    """One agent's implicated revision and its last-known-good, with their bundles when still stored."""

    agent: str
    implicated: int | None
    implicated_bundle: dict[str, Any] | None = None
    known_good: int | None = None
    known_good_bundle: dict[str, Any] | None = None


def revision_section(facts: RevisionFacts) -> dict[str, Any]:
    out: dict[str, Any] = {"agent": facts.agent, "implicated": facts.implicated, "lastKnownGood": facts.known_good}
    if facts.implicated is None:
        out["note"] = "the revision the agent ran is not known (no evidence captured, no rollback recorded)"
    elif facts.known_good is None:
        out["note"] = f"no revision other than {facts.implicated} is known good: nothing to compare with"
    elif facts.implicated_bundle is None or facts.known_good_bundle is None:
        missing = facts.implicated if facts.implicated_bundle is None else facts.known_good
        out["note"] = f"revision {missing}'s bundle ConfigMap is no longer stored (pruned): no diff"
    else:
        diff = bundle_diff(facts.known_good_bundle, facts.implicated_bundle, facts.known_good, facts.implicated)
        out["diff"] = diff
        out["note"] = f"revision {facts.implicated} against last-known-good {facts.known_good}: " + (
            f"{', '.join(diff['changed'])} changed" if diff["changed"] else "identical bundles"
        )
    return {k: v for k, v in out.items() if v is not None}


# ---------------------------------------------------------------- the ledger


@dataclass
class LedgerFacts:
    """What the ledger said about the incident's window (or why nothing could be read)."""

    state: str  # read | none | unreadable
    detail: str
    blast_radius: dict[str, Any] | None = None  # BlastRadiusSummary.to_dict()
    compensation: dict[str, int] | None = None  # state -> count, for this incident
    traces: list[dict[str, Any]] = field(default_factory=list)
    sampled_of: int = 0


def _clip(value: Any) -> Any:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= TRACE_PART_LIMIT else text[:TRACE_PART_LIMIT] + f"… ({len(text)} characters)"


def trace_entry(
    key: str, tool: str, arguments: dict[str, Any], time: datetime | None, task: str | None, parts: dict[str, Any]
) -> dict[str, Any]:
    entry: dict[str, Any] = {"action": key, "tool": tool, "arguments": arguments}
    if time is not None:
        entry["time"] = time.isoformat()
    if task:
        entry["task"] = task
    entry["trace"] = {name: _clip(value) for name, value in parts.items()} if parts else None
    if not parts:
        entry["note"] = "no decision trace recorded (or pruned past its retention)"
    return entry


def sample_actions(keys: list[str], limit: int = TRACE_SAMPLE) -> list[str]:
    """A sample spread over the window: the first, the last, and evenly between (keys are oldest first)."""
    if len(keys) <= limit:
        return list(keys)
    step = (len(keys) - 1) / (limit - 1)
    return [keys[round(i * step)] for i in range(limit)]


# ---------------------------------------------------------------- the document


def _seconds(value: Any) -> str:
    return f"{float(value):.2f} s" if isinstance(value, int | float) else "not observed"


def _offset(time: str | None, start: datetime | None) -> str:
    at = parse_time(time)
    if at is None or start is None:
        return ""
    return f"{(at - start).total_seconds():+.2f}s"


def build_postmortem(
    incident: dict[str, Any],
    *,
    revisions: list[RevisionFacts],
    ledger: dict[str, LedgerFacts],
    cases: list[dict[str, Any]],
    now: str,
) -> dict[str, Any]:
    meta, spec, status = incident["metadata"], incident.get("spec") or {}, incident.get("status") or {}
    timings = status.get("timings") or {}
    start = parse_time(timings.get("startedAt")) or parse_time(meta.get("creationTimestamp"))
    timeline = [{**entry, "offset": _offset(entry.get("time"), start)} for entry in status.get("timeline") or []]
    detection = status.get("detection") or {}
    detect = timings.get("detectedSeconds")
    resolved = bool(spec.get("resolved"))
    lever_seconds = timings.get("levers") or {}
    levers = [
        {
            "agent": lever.get("agent"),
            "name": lever.get("name"),
            "state": lever.get("state"),
            "detail": lever.get("detail") or "",
            "appliedSeconds": lever_seconds.get(f"{lever.get('agent')}/{lever.get('name')}"),
            "heldWith": [i for i in lever.get("incidents") or [] if i != meta["name"]],
        }
        for lever in status.get("levers") or []
    ]
    evidence = status.get("evidence") or {}
    summary = spec.get("summary") or (
        f"{spec.get('severity')} {spec.get('class', 'other')} incident on {', '.join(spec.get('agents') or [])}"
    )
    how_detected = (
        f"by {detection.get('source', 'prometheus')} rule {detection.get('rule') or detection.get('fingerprint')}, "
        f"first seen {detection.get('firstSeen')}"
        if detection
        else "opened by a person (no detection signal recorded)"
    )
    doc: dict[str, Any] = {
        "incident": meta["name"],
        "namespace": meta.get("namespace"),
        "generatedAt": now,
        "final": resolved,
        "summary": summary,
        "severity": spec.get("severity"),
        "class": spec.get("class", "other"),
        "agents": list(status.get("agents") or spec.get("agents") or []),
        "phase": status.get("phase"),
        "detection": how_detected,
        "timeline": {
            "startedAt": timings.get("startedAt"),
            "startedFrom": timings.get("startedFrom"),
            "timeToDetectSeconds": detect,
            "timeToContainSeconds": timings.get("containedSeconds"),
            "timeToResolveSeconds": timings.get("resolvedSeconds"),
            "entries": timeline,
        },
        "levers": levers,
        "evidence": {k: v for k, v in evidence.items() if v is not None},
        "ledger": {
            agent: {
                "state": facts.state,
                "detail": facts.detail,
                **({"blastRadius": facts.blast_radius} if facts.blast_radius is not None else {}),
                **({"compensation": facts.compensation} if facts.compensation is not None else {}),
                **({"sampledOf": facts.sampled_of} if facts.state == "read" else {}),
            }
            for agent, facts in ledger.items()
        },
        "revisions": [revision_section(r) for r in revisions],
        "traces": [t for facts in ledger.values() for t in facts.traces],
        "regressionCases": [c["metadata"]["name"] for c in cases],
    }
    doc["questions"] = review_questions_of(doc)
    return doc


def review_questions_of(doc: dict[str, Any]) -> list[dict[str, str]]:
    """The questions left for people, each with what the record already says."""
    traces = len(doc.get("traces") or [])
    ledgers = (doc.get("ledger") or {}).values()
    sampled_of = sum(int(entry.get("sampledOf") or 0) for entry in ledgers)
    seen = (
        f"{traces} decision trace(s) of {sampled_of} implicated action(s) below"
        if traces
        else "no decision trace could be read: " + "; ".join(str(entry.get("detail")) for entry in ledgers)
        if ledgers
        else "no decision trace could be read"
    )
    changed = [
        f"{r['agent']} revision {r['implicated']}: {', '.join(r['diff']['changed']) or 'nothing'} changed"
        for r in doc["revisions"]
        if r.get("diff")
    ]
    detect = doc["timeline"]["timeToDetectSeconds"]
    contain = doc["timeline"]["timeToContainSeconds"]
    cases = doc["regressionCases"]
    return [
        {"question": "What did the agent see?", "record": seen},
        {
            "question": "Why did it choose what it did?",
            "record": "; ".join(changed) if changed else "no bundle change against last-known-good to point at",
        },
        {
            "question": "Why did detection take as long as it did?",
            "record": f"{doc['detection']}; detected {_seconds(detect)} after the threshold crossing"
            if detect is not None
            else doc["detection"],
        },
        {
            "question": "Which guardrail would have stopped it?",
            "record": f"contained {_seconds(contain)} after it was opened by "
            + (", ".join(sorted({f"{lv['name']}" for lv in doc["levers"]})) or "no lever"),
        },
        {
            "question": "What test closes it?",
            "record": f"regression case(s): {', '.join(cases)}"
            if cases
            else f"none recorded yet: kubectl tourniquet regression {doc['incident']} --expect '…'",
        },
    ]


def merge_postmortem(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The new document over the old one: a ledger read before and unreadable now keeps what was read (saying
    so), and every other field the new one leaves out or empty is kept (:func:`keep_fields`)."""
    new = dict(new)
    ledger = dict(new.get("ledger") or {})
    for agent, before in (old.get("ledger") or {}).items():
        now = ledger.get(agent) or {}
        if before.get("state") == "read" and now.get("state") != "read":
            ledger[agent] = {
                **before,
                "detail": f"{before.get('detail')} (as read at {old.get('generatedAt')}; now: {now.get('detail')})",
            }
    new["ledger"] = ledger
    merged: dict[str, Any] = keep_fields(old, new)
    merged["questions"] = review_questions_of(merged)
    return merged


def keep_fields(old: Any, new: Any) -> Any:
    """`new`, with what `old` held and `new` leaves out or empty kept (at any depth): a later edit of the incident
    or a pruned revision never erases what the postmortem already recorded."""
    if isinstance(old, dict) and isinstance(new, dict):
        merged = dict(new)
        for key, value in old.items():
            merged[key] = keep_fields(value, new[key]) if key in new else value
        return merged
    if new in (None, "", [], {}) and old not in (None, "", [], {}):
        return old
    if isinstance(old, list) and isinstance(new, list) and key_list(old) and key_list(new):
        return _merge_keyed(old, new)
    return new


def key_list(items: list[Any]) -> bool:
    return all(isinstance(i, dict) and "agent" in i for i in items)


def _merge_keyed(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Lists of per-agent entries (revisions, levers): merged entry by entry, none dropped."""

    def ident(item: dict[str, Any]) -> tuple[Any, Any]:
        return item.get("agent"), item.get("name") or item.get("action")

    by_id = {ident(i): i for i in old}
    merged = [keep_fields(by_id.get(ident(i)), i) if ident(i) in by_id else i for i in new]
    seen = {ident(i) for i in new}
    return merged + [i for i in old if ident(i) not in seen]


# ---------------------------------------------------------------- Markdown


def _fence(text: str, lang: str = "") -> str:
    return f"```{lang}\n{text.rstrip()}\n```"


def render_markdown(doc: dict[str, Any]) -> str:
    out: list[str] = []
    add = out.append
    state = "final" if doc.get("final") else "draft: the incident is still open"
    add(f"# Postmortem: {doc['incident']} ({state})\n")
    add(f"Generated {doc.get('generatedAt')} from AgentIncident {doc.get('namespace')}/{doc['incident']}.\n")
    add("## Summary\n")
    add(f"{doc.get('summary')}\n")
    add(f"- Severity: **{doc.get('severity')}**, class: **{doc.get('class')}**")
    add(f"- Agents: {', '.join(doc.get('agents') or []) or 'none'}")
    add(f"- Detection: {doc.get('detection')}\n")
    timeline = doc.get("timeline") or {}
    add("## Timeline\n")
    add(f"Counted from {timeline.get('startedAt')} ({timeline.get('startedFrom') or 'creation'}).\n")
    add(f"- Time to detect: {_seconds(timeline.get('timeToDetectSeconds'))}")
    add(f"- Time to contain: {_seconds(timeline.get('timeToContainSeconds'))}")
    add(f"- Time to resolve: {_seconds(timeline.get('timeToResolveSeconds'))}\n")
    add("| Time | Offset | Event | Agent | Detail |")
    add("|---|---|---|---|---|")
    for entry in timeline.get("entries") or []:
        message = str(entry.get("message") or "").replace("|", "\\|").replace("\n", " ")
        cells = [entry.get("time"), entry.get("offset", ""), entry.get("event"), entry.get("agent") or "", message]
        add("| " + " | ".join(str(c) for c in cells) + " |")
    add("\n## Levers\n")
    if not doc.get("levers"):
        add("No lever was pulled.")
    for lever in doc.get("levers") or []:
        applied = (
            f"applied after {_seconds(lever.get('appliedSeconds'))}"
            if lever.get("appliedSeconds") is not None
            else "never observed applied"
        )
        held = f"; held with {', '.join(lever['heldWith'])}" if lever.get("heldWith") else ""
        what = f"{lever.get('agent')}/{lever.get('name')}"
        add(f"- **{what}**: {lever.get('state')}, {applied}: {lever.get('detail')}{held}")
    evidence = doc.get("evidence") or {}
    add("\n## Evidence\n")
    add(
        f"ConfigMap `{evidence['configMap']}`, captured {evidence.get('capturedAt')} ({evidence.get('bytes')} bytes"
        + (", truncated)" if evidence.get("truncated") else ")")
        if evidence.get("configMap")
        else "No evidence was captured."
    )
    add("\n## Blast radius and compensation\n")
    for agent, facts in (doc.get("ledger") or {}).items():
        add(f"### {agent}\n")
        add(f"{facts.get('detail')}\n")
        blast = facts.get("blastRadius")
        if blast:
            add(
                f"Window {blast.get('start')} to {blast.get('end') or 'now'} ({blast.get('windowSource', '')}): "
                f"{blast.get('actions', 0)} action(s), {blast.get('subjects', 0)} subject(s).\n"
            )
            add("| Tool | Actions | Subjects | Amounts | Compensation |")
            add("|---|---|---|---|---|")
            for tool in blast.get("tools") or []:
                amounts = ", ".join(f"{v} {k}".strip() for k, v in (tool.get("amounts") or {}).items())
                cells = [tool.get("tool"), tool.get("actions"), tool.get("subjects"), amounts, tool.get("compensation")]
                add("| " + " | ".join(str(c) for c in cells) + " |")
            add("")
        compensation = facts.get("compensation")
        if compensation is not None:
            counts = ", ".join(f"{n} {state}" for state, n in compensation.items())
            add(f"Compensation for this incident: {counts or 'none run'}.\n")
    add("## The implicated revision against last-known-good\n")
    for revision in doc.get("revisions") or []:
        add(f"### {revision.get('agent')}\n")
        add(f"{revision.get('note')}\n")
        for part, text in (revision.get("diff") or {}).items():
            if part == "changed":
                continue
            add(f"**{part}**: " + ("unchanged" if not text else "") + "\n")
            if text:
                add(_fence(text, "diff") + "\n")
    add("## Decision traces (a sample of the implicated actions)\n")
    if not doc.get("traces"):
        add("None could be read (see the ledger above).\n")
    for trace in doc.get("traces") or []:
        add(f"### {trace.get('tool')} at {trace.get('time')} ({trace.get('action')})\n")
        add(
            _fence(
                json.dumps(
                    {k: v for k, v in trace.items() if k not in ("tool", "time", "action")}, indent=2, sort_keys=True
                ),
                "json",
            )
            + "\n"
        )
    add("## Review questions\n")
    for number, item in enumerate(doc.get("questions") or [], 1):
        add(f"{number}. **{item['question']}** The record: {item['record']}.")
    return "\n".join(out) + "\n"
