"""AgentDeployment handlers: every cause queues the same reconcile (:mod:`tourniquet.reconcilers.agents`)."""

from __future__ import annotations

import json
import os
from typing import Any

import kopf

from tourniquet.adapters.kube import ApiError
from tourniquet.domain import names
from tourniquet.domain.containment import IncidentView, incident_view
from tourniquet.freshness import is_canary
from tourniquet.handlers.freshness import count_incident_event
from tourniquet.reconcilers.agentdeployment import AgentReport, Children, ChildrenSeen
from tourniquet.reconcilers.agents import Agents
from tourniquet.reconcilers.consumers import unwire_agent_deployment

RESOURCE = ("tourniquet.dev", "v1alpha1", "agentdeployments")
# How often every agent is re-reconciled (drift repair, promotion). Read once, at import.
RESYNC_SECONDS = float(os.environ.get("TOURNIQUET_RESYNC_SECONDS", "300"))


def plain(body: kopf.Body) -> dict[str, Any]:
    """A deep, mutable copy of Kopf's read-only body view."""
    result: dict[str, Any] = json.loads(json.dumps(dict(body)))
    return result


def incident_views(index: kopf.Index[str, IncidentView], namespace: str) -> list[IncidentView]:
    """The namespace's incidents from the operator's in-memory index (no API call on the hot path)."""
    return list(index.get(namespace, []))


@kopf.index("tourniquet.dev", "v1alpha1", "agentincidents")
async def incidents_by_namespace(body: kopf.Body, memo: Any, **_: Any) -> dict[str, IncidentView] | None:
    """Each incident's spec parsed once per generation (async: Kopf runs sync handlers in a thread pool); a view
    keeps only what containment reads, not the timeline, which every status write lengthens.

    Every event, the canary's too, is also counted for the watch-freshness probe here: one indexer per incident
    event, not two. The canary is not indexed."""
    count_incident_event(body, memo)
    if is_canary(body):
        return None
    view = incident_view(body)
    return {body["metadata"]["namespace"]: view} if view is not None else None


# The agents' control ConfigMaps, bundle ConfigMaps and NetworkPolicies as the watch last delivered them, by
# (namespace, agent): a lever plans on them and guards its write with their resourceVersion, instead of reading
# them first; an incident's pass takes the running bundle's data for its evidence from them.
OWNED = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
# The API server sends the operator's watches of those kinds only what these indexes hold: not the cluster's other
# ConfigMaps, nor the incidents' evidence, each of which Kopf would otherwise receive, decode and process only to
# find no handler for it (in a burst of SEV1s, one watch event in five).
_OWNED_SELECTOR = f"{names.LABEL_MANAGED_BY}={names.MANAGED_BY}"
WATCHED: dict[str | tuple[str, str], str] = {
    "configmaps": (
        f"{_OWNED_SELECTOR},{names.LABEL_COMPONENT} in ({names.COMPONENT_BUNDLE},{names.COMPONENT_CONTROL})"
    ),
    ("networking.k8s.io", "networkpolicies"): _OWNED_SELECTOR,
}


@kopf.on.startup()
async def watch_only_owned(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Server-side label selectors for the watches of the owned objects (WATCHED), set before they start."""
    for resource, selector in WATCHED.items():
        settings.watching.label_selectors[resource] = selector


def _owned_by_agent(body: kopf.Body, *key_extra: str) -> dict[tuple[str, ...], dict[str, Any]] | None:
    agent = (body["metadata"].get("labels") or {}).get(names.LABEL_AGENT)
    return {(body["metadata"]["namespace"], agent, *key_extra): watched_copy(body)} if agent else None


def watched_copy(body: kopf.Body) -> dict[str, Any]:
    """What the levers, the revisions and the evidence read of an owned object (its metadata but managedFields, its
    data, its spec), without copying it: the parts are those of the object the watch delivered, which Kopf replaces
    at the next event and never edits, and which no reader edits either (a lever plans a patch from it and keeps
    what its write returns). No deep copy for every event of every owned object in a burst."""
    meta = {key: value for key, value in body["metadata"].items() if key != "managedFields"}
    return {"metadata": meta, **{part: body[part] for part in ("data", "spec") if part in body}}


# One indexer per kind, not one per component: Kopf runs its whole handler machinery once per indexer and event.
@kopf.index("configmaps", labels=OWNED)
async def owned_configmaps(body: kopf.Body, **_: Any) -> dict[tuple[str, ...], dict[str, Any]] | None:
    """The control and bundle ConfigMaps, by (namespace, agent, component)."""
    component = (body["metadata"].get("labels") or {}).get(names.LABEL_COMPONENT)
    if component not in (names.COMPONENT_CONTROL, names.COMPONENT_BUNDLE):
        return None
    return _owned_by_agent(body, component)


@kopf.index("networking.k8s.io", "v1", "networkpolicies", labels=OWNED)
async def egress_policies(body: kopf.Body, **_: Any) -> dict[tuple[str, ...], dict[str, Any]] | None:
    return _owned_by_agent(body)


Owned = kopf.Index[tuple[str, ...], dict[str, Any]]


def children_seen(configmaps: Owned, policies: Owned) -> ChildrenSeen:
    def seen(namespace: str, name: str) -> Children:
        bundles = (namespace, name, names.COMPONENT_BUNDLE)
        return Children(
            control=next(iter(configmaps.get((namespace, name, names.COMPONENT_CONTROL), [])), None),
            policy=next(iter(policies.get((namespace, name), [])), None),
            bundles=list(configmaps[bundles]) if bundles in configmaps else None,
        )

    return seen


def start_agents(memo: Any, kwargs: dict[str, Any]) -> Agents:
    """The agents' passes (one per operator process), reading the operator's indexes."""
    index: kopf.Index[str, IncidentView] = kwargs["incidents_by_namespace"]

    async def after(report: AgentReport) -> None:
        await _record_drift(report, memo)

    memo.agents = Agents(
        memo.api,
        lambda namespace: incident_views(index, namespace),
        seen=children_seen(kwargs["owned_configmaps"], kwargs["egress_policies"]),
        after=after,
        resync_seconds=RESYNC_SECONDS,
        lane=memo.lane,
    )
    return memo.agents


async def _record_drift(outcome: AgentReport, memo: Any) -> None:
    """A pass put a lever back, or rolled back for an incident: say so in the timeline of every incident
    holding it, at its next pass (an incident's own pass says it itself)."""
    holders: dict[str, list[tuple[str, str, str | None]]] = {}
    for seen in outcome.levers.values():
        for incident in seen.holders if seen.drift else []:
            holders.setdefault(incident, []).extend(("DriftRepaired", m, outcome.agent) for m in seen.drift)
    if outcome.rollback:
        for incident in outcome.rollback_by:
            holders.setdefault(incident, []).append(("RolledBack", outcome.rollback, outcome.agent))
    for incident, said in holders.items():
        memo.incidents.note(outcome.namespace, incident, said)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def agent_changed(body: kopf.Body, memo: Any, **_: Any) -> None:
    """The agent's pass is queued (memo.agents): it reads the agent fresh, and comes back every RESYNC_SECONDS
    (drift repair, promotion), sooner while the agent is refused (InvalidSpec)."""
    memo.agents.add(body["metadata"]["namespace"], body["metadata"]["name"])


@kopf.on.delete(*RESOURCE)
async def agent_deleted(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Unwire the consumers, so their pods do not reference a bundle ConfigMap that is going away."""
    memo.agents.forget(body["metadata"]["namespace"], body["metadata"]["name"])
    try:
        await unwire_agent_deployment(memo.api, plain(body))
    except ApiError as error:
        raise kopf.TemporaryError(f"Kubernetes API: {error}", delay=2 if error.transient else 30) from error
