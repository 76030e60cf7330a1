"""Regression cases (pure): built from an incident, given to the evaluation Job, exported for Git.

A case holds the inputs of the incident's implicated actions and the behaviour expected instead. The inputs
come from the ledger's decision traces when a ledger can be read (each action's tool, arguments, task, subjects
and what led to it), otherwise from the incident's evidence (the agent's log lines that name a write tool).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tourniquet.domain import names
from tourniquet.domain.conditions import parse_time, set_condition
from tourniquet.models.review import AgentRegressionCaseStatus

TRACE_LIMIT = 4096  # bytes of one input's decision trace kept in a case (the CR must stay small)
EVIDENCE_LINES = 20
DEFAULT_SAMPLE = 20
LABEL_INCIDENT = f"{names.PREFIX}/incident"


def case_for_eval(body: dict[str, Any]) -> dict[str, Any]:
    """What the eval command reads for one case: its spec and its name."""
    return {"name": body["metadata"]["name"], **(body.get("spec") or {})}


def cases_of(bodies: list[dict[str, Any]], agent: str) -> list[dict[str, Any]]:
    """The cases of `agent`, for its evaluation (sorted by name, so the cases file is deterministic)."""
    mine = [case_for_eval(b) for b in bodies if (b.get("spec") or {}).get("agent") == agent]
    return sorted(mine, key=lambda c: str(c["name"]))


def case_status(
    status: dict[str, Any], *, agent: str, namespace: str, exists: bool, now: datetime, generation: int | None
) -> dict[str, Any]:
    if exists:
        accepted = (True, "Valid", f"every redeploy of {agent} that its spec.evaluation gates must pass this case")
    else:
        accepted = (
            False,
            "AgentNotFound",
            f"AgentDeployment {agent} not found in namespace {namespace}: nothing is gated by this case until it "
            "exists (check spec.agent)",
        )
    conditions = set_condition(
        list(status.get("conditions") or []), "Accepted", *accepted, now=now, generation=generation
    )
    return {**status, **AgentRegressionCaseStatus(observed_generation=generation, conditions=conditions).to_status()}


def case_name(incident: str, agent: str, agents: int) -> str:
    """`<incident>` for a one-agent incident, else `<incident>-<agent>`; within the name limit."""
    return names._bounded(incident if agents == 1 else f"{incident}-{agent}")


# ---------------------------------------------------------------- from an incident


def evidence_agents(evidence: dict[str, str] | None) -> dict[str, Any]:
    """The agents as the evidence captured them (spec and status at the time)."""
    try:
        parsed = json.loads((evidence or {}).get("agent.json") or "{}")
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def implicated_revision(incident: dict[str, Any], evidence: dict[str, str] | None, agent: str) -> int | None:
    """The bundle revision the agent ran during the incident: the one the incident's rollback took out, else as
    captured in the evidence (which an incident's own rollback may precede: it is captured after shadow and
    revoke, in the same pass as the rollback)."""
    for entry in (incident.get("status") or {}).get("timeline") or []:
        if entry.get("event") == "RolledBack" and entry.get("agent") in (None, agent):
            found = re.search(r"rolled back from revision (\d+)", str(entry.get("message")))
            if found:
                return int(found.group(1))
    captured = (evidence_agents(evidence).get(agent) or {}).get("status") or {}
    revision = (captured.get("bundle") or {}).get("revision")
    return revision if isinstance(revision, int) else None


def incident_window(
    incident: dict[str, Any], evidence: dict[str, str] | None, agent: str, now: datetime
) -> tuple[datetime, datetime]:
    """The incident window: spec.window.start, else the first detection signal, else the implicated revision's
    rollout, else the incident's creation; to spec.window.end, else containment observed, else now."""
    spec, status = incident.get("spec") or {}, incident.get("status") or {}
    captured = (evidence_agents(evidence).get(agent) or {}).get("status") or {}
    starts = [
        (spec.get("window") or {}).get("start"),
        (status.get("detection") or {}).get("firstSeen"),
        (captured.get("bundle") or {}).get("activeSince"),
        (incident.get("metadata") or {}).get("creationTimestamp"),
    ]
    start = next((t for t in map(parse_time, starts) if t is not None), now)
    contained = next(
        (e.get("time") for e in status.get("timeline") or [] if e.get("event") == "Contained"),
        None,
    )
    end = next((t for t in map(parse_time, [(spec.get("window") or {}).get("end"), contained]) if t), now)
    return start, max(start, end)


def bounded_trace(trace: Any, limit: int = TRACE_LIMIT) -> dict[str, Any] | None:
    """A decision trace cut to `limit` bytes of JSON (each part as far as it fits), marked when cut."""
    if not trace:
        return None
    plain = json.loads(json.dumps(trace, default=str))
    if not isinstance(plain, dict):
        plain = {"value": plain}
    text = json.dumps(plain, sort_keys=True)
    if len(text.encode()) <= limit:
        return plain
    share = max(64, limit // max(1, len(plain)) - 32)
    cut = {
        k: (json.dumps(v, sort_keys=True)[:share] if not isinstance(v, str) else v[:share]) for k, v in plain.items()
    }
    return {**cut, "truncated": True}


@dataclass(frozen=True)
class ActionRecord:
    """An implicated action as read from a ledger (only what a case needs)."""

    key: str
    tool: str
    arguments: dict[str, Any]
    time: datetime | None = None
    task: str | None = None
    subjects: tuple[str, ...] = ()
    trace: dict[str, Any] | None = None


def inputs_from_actions(actions: list[ActionRecord], sample: int = DEFAULT_SAMPLE) -> list[dict[str, Any]]:
    """A sample of the implicated actions as case inputs: the earliest first, so a retried task shows whole."""
    chosen = sorted(actions, key=lambda a: (a.time or datetime.min, a.key))[:sample]
    inputs = []
    for action in chosen:
        entry: dict[str, Any] = {"tool": action.tool, "arguments": action.arguments, "action": action.key}
        if action.task:
            entry["task"] = action.task
        if action.subjects:
            entry["subjects"] = list(action.subjects)
        if action.time is not None:
            entry["time"] = action.time.isoformat()
        trace = bounded_trace(action.trace)
        if trace:
            entry["trace"] = trace
        inputs.append(entry)
    return inputs


def inputs_from_evidence(
    evidence: dict[str, str] | None, tools: list[str], sample: int = DEFAULT_SAMPLE
) -> list[dict[str, Any]]:
    """Without a ledger: the evidence's log lines that name one of `tools` (else its last lines), one input each,
    for people to turn into the inputs the eval needs."""
    lines = [line for line in ((evidence or {}).get("logs.txt") or "").splitlines() if line.strip()]
    pod = ""
    found: list[dict[str, Any]] = []
    for line in lines:
        if line.startswith("==> ") and line.endswith(" <=="):
            pod = line[4:-4]
            continue
        tool = next((t for t in tools if re.search(rf"\b{re.escape(t)}\b", line)), None)
        if tool is not None:
            found.append({"tool": tool, "evidence": f"{pod}: {line}" if pod else line})
    if found:
        return found[:sample]
    tail = [line for line in lines if not line.startswith("==> ")][-EVIDENCE_LINES:]
    return [{"evidence": "\n".join(tail)}] if tail else []


def build_case(
    name: str,
    namespace: str,
    *,
    agent: str,
    incident: str,
    revision: int | None,
    source: str,
    inputs: list[dict[str, Any]],
    expected: dict[str, Any],
) -> dict[str, Any]:
    spec: dict[str, Any] = {"agent": agent, "incident": incident, "source": source, "inputs": inputs}
    if revision is not None:
        spec["revision"] = revision
    spec["expected"] = expected
    return {
        "apiVersion": "tourniquet.dev/v1alpha1",
        "kind": "AgentRegressionCase",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {names.LABEL_AGENT: agent[:63].rstrip("-."), LABEL_INCIDENT: incident[:63].rstrip("-.")},
        },
        "spec": spec,
    }


def export_case(body: dict[str, Any], *, namespace: bool = False) -> dict[str, Any]:
    """The case as it belongs in Git: no status, no server-set metadata."""
    meta = body.get("metadata") or {}
    kept: dict[str, Any] = {"name": meta.get("name")}
    if namespace and meta.get("namespace"):
        kept["namespace"] = meta["namespace"]
    for key in ("labels", "annotations"):
        values = {k: v for k, v in (meta.get(key) or {}).items() if not k.startswith("kubectl.kubernetes.io/")}
        if values:
            kept[key] = values
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": kept, "spec": body.get("spec")}
