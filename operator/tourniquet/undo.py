"""What the on-call undo commands read: an incident, its agents' bundles and the ledger (the CLI's glue).

``tourniquet blast-radius``, ``trace`` and ``compensate`` read the incident and its AgentDeployments through
the API (with the user's own credentials) and the ledger directly. The ledger's URL is ``--ledger``, else
``TOURNIQUET_LEDGER`` / ``TOURNIQUET_LEDGER_URL_FILE``; the CLI does not read Secrets: when none is given,
the error names the agent's ``spec.ledger`` Secret and how to read it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tourniquet.domain.blastradius import (
    BlastRadiusSummary,
    IncidentWindow,
    SubjectRow,
    compute_blast_radius,
    incident_window,
    subject_table,
)
from tourniquet.domain.compensation import Declaration, PlanError, Selector, declarations_from_bundle
from tourniquet.models import Bundle
from tourniquet.runtime.compensate import CompensationRequest
from tourniquet.runtime.ledger import SqlLedger, ledger_target_from_env


class UndoError(RuntimeError):
    """The command cannot go on; the message says what to do."""


@dataclass
class IncidentContext:
    namespace: str
    name: str
    incident: dict[str, Any]
    agents: dict[str, dict[str, Any]]
    window: IncidentWindow

    @property
    def key(self) -> str:
        """How the ledger names the incident's compensations."""
        return f"{self.namespace}/{self.name}"

    def bundles(self) -> dict[str, Bundle]:
        return {name: Bundle.model_validate(agd["spec"]["bundle"]) for name, agd in self.agents.items()}

    def declarations(self) -> dict[str, dict[str, Declaration]]:
        try:
            return {name: declarations_from_bundle(bundle) for name, bundle in self.bundles().items()}
        except PlanError as exc:
            raise UndoError(str(exc)) from exc

    def ledger_secret(self) -> dict[str, str] | None:
        for agd in self.agents.values():
            ref = ((agd.get("spec") or {}).get("ledger") or {}).get("secretRef")
            if ref:
                return {"name": ref["name"], "key": ref.get("key") or "url"}
        return None


async def load_context(api: Any, namespace: str, name: str) -> IncidentContext:
    from tourniquet.adapters.kube import AGENTDEPLOYMENTS, AGENTINCIDENTS

    incident = await api.get_or_none(AGENTINCIDENTS, namespace, name)
    if incident is None:
        raise UndoError(f"AgentIncident {name} not found in namespace {namespace}")
    agents: dict[str, dict[str, Any]] = {}
    for agent in (incident.get("spec") or {}).get("agents") or []:
        agd = await api.get_or_none(AGENTDEPLOYMENTS, namespace, agent)
        if agd is None:
            raise UndoError(f"the incident's agent {agent} (AgentDeployment) is not in namespace {namespace}")
        agents[agent] = agd
    try:
        window = incident_window(incident)
    except ValueError as exc:
        raise UndoError(str(exc)) from exc
    return IncidentContext(namespace, name, incident, agents, window)


def ledger_target(option: str | None, environ: Mapping[str, str], context: IncidentContext | None = None) -> str:
    if option:
        return option
    if environ.get("TOURNIQUET_LEDGER") or environ.get("TOURNIQUET_LEDGER_URL_FILE"):
        return ledger_target_from_env(environ)
    hint = ""
    secret = context.ledger_secret() if context is not None else None
    if secret is not None and context is not None:
        hint = (
            f" (the agent's spec.ledger names Secret {secret['name']}, key {secret['key']}: "
            f"kubectl -n {context.namespace} get secret {secret['name']} -o jsonpath='{{.data.{secret['key']}}}' "
            "| base64 -d)"
        )
    raise UndoError(f"which ledger? give --ledger URL or set TOURNIQUET_LEDGER{hint}")


def decode_secret_value(value: str) -> str:
    return base64.b64decode(value).decode().strip()


def blast_radius(ledger: SqlLedger, context: IncidentContext) -> BlastRadiusSummary:
    window = context.window
    counts = {agent: ledger.blast_radius(agent, window.start, window.end) for agent in context.agents}
    return compute_blast_radius(
        window.start, window.end, counts, context.declarations(), window_source=window.source
    )


def subjects(ledger: SqlLedger, context: IncidentContext) -> list[dict[str, Any]]:
    window = context.window
    rows = [
        SubjectRow(subject, agent, tool, n)
        for agent in context.agents
        for subject, tool, n in ledger.subject_actions(agent, window.start, window.end)
    ]
    return subject_table(rows)


def compensation_request(
    context: IncidentContext,
    *,
    tools: Iterable[str] = (),
    subjects: Iterable[str] = (),
    bundle_revisions: Iterable[int] = (),
    duplicates_only: bool = False,
) -> CompensationRequest:
    tool_list, subject_list, revision_list = tuple(tools), tuple(subjects), tuple(bundle_revisions)
    try:
        selector = Selector(
            start=context.window.start,
            end=context.window.end,
            tools=tool_list or None,
            subjects=subject_list or None,
            bundle_revisions=revision_list or None,
            duplicates_only=duplicates_only,
        )
        bundles = {name: bundle.model_dump(mode="json", by_alias=True) for name, bundle in context.bundles().items()}
        return CompensationRequest.from_bundles(context.key, bundles, selector)
    except PlanError as exc:
        raise UndoError(str(exc)) from exc
