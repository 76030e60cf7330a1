"""The postmortem with the demo agent: an incident resolves and `<incident>-postmortem` holds every section filled
from what happened (the timeline, the levers, the ledger's blast radius and decision traces, the implicated
revision's diff against last-known-good), a draft on demand while it is open, and nothing lost when the incident
is edited later."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.conftest import AD, AI, CM, ROOT, Cluster, example, wait_for
from tests.operator.test_agentdeployment import wired_revision
from tourniquet.cli import main as cli

BAD_PROMPT = "You are the refund assistant. Refund every request at once."
INCIDENT = "dup-refunds"


def tourniquet(kubeconfig: str, namespace: str, *args: str) -> Any:
    return CliRunner().invoke(cli, [*args, "--kubeconfig", kubeconfig, "-n", namespace])


def run_demo_agent(ledger: Path) -> None:
    """The demo refund agent misbehaving: customers who ask twice are refunded twice (its actions and decision
    traces go to the ledger, as its runtime writes them)."""
    if str(ROOT / "examples") not in sys.path:
        sys.path.insert(0, str(ROOT / "examples"))
    from refund_agent.agent import main as demo

    assert demo(["--ledger", str(ledger), "--tickets", "12", "--repeat", "0.5", "--misbehave", "1.0"]) == 0


def postmortem(cluster: Cluster) -> dict[str, Any] | None:
    cm = cluster.get(CM, f"{INCIDENT}-postmortem")
    return json.loads(cm["data"]["postmortem.json"]) if cm else None


def written_from(cluster: Cluster) -> str:
    cm = cluster.get(CM, f"{INCIDENT}-postmortem") or {}
    return (cm.get("metadata", {}).get("annotations") or {}).get("tourniquet.dev/postmortem-source", "")


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shared ledger, given to the operator as the chart gives it (TOURNIQUET_LEDGER)."""
    path = tmp_path / "ledger.db"
    monkeypatch.setenv("TOURNIQUET_LEDGER", str(path))
    monkeypatch.delenv("TOURNIQUET_LEDGER_URL_FILE", raising=False)
    return path


def test_a_resolved_incident_has_a_postmortem_filled_from_what_happened(
    cluster: Cluster, operator, oncall_kubeconfig: str, ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = cluster.namespace
    docs = example()
    docs[1]["spec"]["promotion"] = {"soakSeconds": 0}
    docs[1]["spec"]["ledger"] = {"secretRef": {"name": "refund-ledger", "key": "url"}}
    cluster.apply(docs)
    wait_for(lambda: (cluster.status(AD, "refund-agent").get("bundle") or {}).get("lastKnownGood") == 1, timeout=30)
    cluster.patch(
        AD,
        "refund-agent",
        {"spec": {"promotion": {"soakSeconds": 3600}, "bundle": {"prompt": {"template": BAD_PROMPT}}}},
    )
    wait_for(lambda: wired_revision(cluster) == "2", timeout=30, what="revision 2 running")
    window_start = (datetime.now(UTC) - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    run_demo_agent(ledger)

    cluster.apply(
        [
            {
                "apiVersion": "tourniquet.dev/v1alpha1",
                "kind": "AgentIncident",
                "metadata": {"name": INCIDENT},
                "spec": {
                    "agents": ["refund-agent"],
                    "severity": "SEV2",
                    "class": "context-drift",
                    "summary": "The new prompt refunds every request, twice for customers who ask again",
                    "contain": ["shadow", "revokeTools"],
                    "rollback": {"to": "lastKnownGood"},
                    "window": {"start": window_start},
                },
            }
        ]
    )
    wait_for(lambda: cluster.status(AI, INCIDENT).get("phase") == "Contained", timeout=30, what="contained")
    wait_for(lambda: wired_revision(cluster) == "1", timeout=30, what="rolled back to revision 1")

    # While open: a draft on demand.
    draft = tourniquet(oncall_kubeconfig, ns, "postmortem", INCIDENT)
    assert draft.exit_code == 0, draft.output
    assert f"# Postmortem: {INCIDENT} (draft: the incident is still open)" in draft.output
    assert "- Time to resolve: not observed" in draft.output

    released = tourniquet(oncall_kubeconfig, ns, "release", INCIDENT)
    assert released.exit_code == 0, released.output
    doc = wait_for(
        lambda: "resolved=true" in written_from(cluster) and postmortem(cluster), timeout=30, what="the postmortem"
    )

    assert doc["summary"].startswith("The new prompt refunds every request")
    assert (doc["severity"], doc["class"], doc["final"], doc["agents"]) == (
        "SEV2",
        "context-drift",
        True,
        ["refund-agent"],
    )
    timeline = doc["timeline"]
    status = cluster.status(AI, INCIDENT)
    assert timeline["timeToContainSeconds"] == status["timings"]["containedSeconds"] is not None
    assert timeline["timeToResolveSeconds"] == status["timings"]["resolvedSeconds"] is not None
    events = [e["event"] for e in timeline["entries"]]
    assert {"Opened", "LeverApplied", "EvidenceCaptured", "Contained", "RolledBack", "Resolved"} <= set(events)
    assert doc["detection"] == "opened by a person (no detection signal recorded)"
    assert {(lv["name"], lv["state"]) for lv in doc["levers"]} == {("shadow", "Released"), ("revokeTools", "Released")}
    assert all(lv["appliedSeconds"] is not None and lv["detail"] for lv in doc["levers"])
    assert doc["evidence"]["configMap"] == f"{INCIDENT}-evidence"

    # The ledger: what the agent did in the window, and what led to it.
    ledger_section = doc["ledger"]["refund-agent"]
    assert ledger_section["state"] == "read", ledger_section
    blast = ledger_section["blastRadius"]
    refunds = next(t for t in blast["tools"] if t["tool"] == "issue_refund")
    assert refunds["actions"] >= 12 and refunds["compensation"] == "reversal" and refunds["amounts"]["USD cents"] > 0
    assert ledger_section["compensation"] == {}  # none run for this incident yet
    assert 1 <= len(doc["traces"]) <= 5
    assert all(t["trace"] and "modelOutput" in t["trace"] for t in doc["traces"] if t["tool"] == "issue_refund")

    # The implicated revision against last-known-good: a unified diff of the prompt, nothing else changed.
    (revision,) = doc["revisions"]
    assert (revision["implicated"], revision["lastKnownGood"]) == (2, 1)
    assert revision["diff"]["changed"] == ["prompt"]
    assert f"+{BAD_PROMPT}" in revision["diff"]["prompt"].splitlines()
    assert revision["diff"]["prompt"].startswith("--- revision-1/prompt\n+++ revision-2/prompt\n")

    assert len(doc["questions"]) == 5 and all(q["record"] for q in doc["questions"])
    assert doc["questions"][1]["record"] == "refund-agent revision 2: prompt changed"

    # The Markdown twin, as on-call prints it.
    printed = tourniquet(oncall_kubeconfig, ns, "postmortem", INCIDENT)
    assert printed.exit_code == 0, printed.output
    text = printed.output
    assert text == cluster.get(CM, f"{INCIDENT}-postmortem")["data"]["postmortem.md"]
    for part in (f"# Postmortem: {INCIDENT} (final)", "| issue_refund |", "```diff", f"+{BAD_PROMPT}"):
        assert part in text, part
    as_json = tourniquet(oncall_kubeconfig, ns, "postmortem", INCIDENT, "-o", "json")
    assert json.loads(as_json.output)["revisions"] == doc["revisions"]

    # Edited later, with the ledger no longer given to the operator: rewritten, nothing lost.
    monkeypatch.delenv("TOURNIQUET_LEDGER")
    cluster.patch(AI, INCIDENT, {"spec": {"summary": "A prompt change refunded duplicate tickets"}})
    edited = wait_for(
        lambda: (postmortem(cluster) or {}).get("summary") == "A prompt change refunded duplicate tickets"
        and postmortem(cluster),
        timeout=30,
        what="the postmortem rewritten",
    )
    assert edited["ledger"]["refund-agent"]["blastRadius"] == blast
    assert "now: refund-agent's ledger: " in edited["ledger"]["refund-agent"]["detail"]  # its Secret: absent here
    assert edited["traces"] == doc["traces"] and edited["revisions"] == doc["revisions"]
    assert edited["timeline"]["entries"][: len(timeline["entries"])] == timeline["entries"]


def test_without_a_ledger_the_postmortem_says_so(cluster: Cluster, operator, oncall_kubeconfig: str) -> None:
    cluster.apply(example())
    cluster.apply(
        [
            {
                "apiVersion": "tourniquet.dev/v1alpha1",
                "kind": "AgentIncident",
                "metadata": {"name": INCIDENT},
                "spec": {"agents": ["refund-agent"], "severity": "SEV3", "contain": ["shadow"], "resolved": False},
            }
        ]
    )
    wait_for(lambda: cluster.status(AI, INCIDENT).get("phase") == "Contained", timeout=30, what="contained")
    cluster.patch(AI, INCIDENT, {"spec": {"resolved": True}})
    doc = wait_for(lambda: postmortem(cluster), timeout=30, what="the postmortem")
    assert doc["ledger"]["refund-agent"]["detail"].startswith("no ledger configured (spec.ledger of refund-agent")
    assert doc["traces"] == []
    assert doc["revisions"][0]["note"] == "no revision other than 1 is known good: nothing to compare with"
    assert doc["summary"] == "SEV3 other incident on refund-agent"
    missing = tourniquet(oncall_kubeconfig, cluster.namespace, "postmortem", "no-such-incident")
    assert missing.exit_code == 1 and "AgentIncident no-such-incident not found" in missing.output
