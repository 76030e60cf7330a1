"""Write an incident's postmortem: gather the facts, build the document, make `<incident>-postmortem` hold it.

Written when the incident's resolution is observed, again when it is edited later (nothing it recorded is
lost: :func:`tourniquet.domain.postmortem.keep_fields`), and on demand while it is open (the annotation
``tourniquet.dev/postmortem-requested``, which ``kubectl tourniquet postmortem`` sets). The ConfigMap records
what it was written from, so an unchanged incident is not written twice.

The ledger is read when the agent names one (``spec.ledger``): its URL from that Secret, as the undo reads it
(the chart lists the Secrets the operator may read in ``ledger.secretNames``), else the ledger the operator
was given (``TOURNIQUET_LEDGER`` / ``TOURNIQUET_LEDGER_URL_FILE``); otherwise the postmortem says why not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tourniquet.adapters.kube import AGENTDEPLOYMENTS, AGENTREGRESSIONCASES, CONFIGMAPS, ApiError, KubeApi
from tourniquet.domain import names
from tourniquet.domain import postmortem as pm
from tourniquet.domain.blastradius import BlastRadiusSummary, compute_blast_radius, incident_window
from tourniquet.domain.bundles import RevisionVerdict, stored_revision_from_configmap
from tourniquet.domain.compensation import PlanError, declarations_from_bundle
from tourniquet.domain.incident import micro_time
from tourniquet.domain.regression import LABEL_INCIDENT, implicated_revision
from tourniquet.models import Bundle

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


def operator_ledger(environ: Mapping[str, str] | None = None) -> str | None:
    """The ledger the operator was given, if any."""
    env = os.environ if environ is None else environ
    if not (env.get("TOURNIQUET_LEDGER") or env.get("TOURNIQUET_LEDGER_URL_FILE")):
        return None
    from tourniquet.runtime.ledger import ledger_target_from_env

    return ledger_target_from_env(env)


async def agent_ledger(
    api: KubeApi, namespace: str, agent: Mapping[str, Any], fallback: str | None
) -> tuple[str | None, str]:
    """The agent's ledger URL: from the Secret its spec.ledger names (as the undo reads it), else the ledger the
    operator was given (TOURNIQUET_LEDGER); None and why when neither can be had."""
    from tourniquet.reconcilers.undo import _ledger_ref, _ledger_url, _NoLedger

    ref = _ledger_ref(agent)
    if ref is None:
        return fallback, "" if fallback else "no ledger configured (spec.ledger)"
    try:
        return await _ledger_url(api, namespace, *ref), ""
    except _NoLedger as error:
        if fallback is not None:
            return fallback, ""
        return None, str(error)


def summary_dict(summary: BlastRadiusSummary) -> dict[str, Any]:
    return {
        "start": summary.start.isoformat(),
        "end": summary.end.isoformat() if summary.end else None,
        "windowSource": summary.window_source,
        "actions": summary.actions,
        "subjects": summary.subjects,
        "reversible": summary.reversible,
        "irreversible": summary.irreversible,
        "tools": [t.to_dict() for t in summary.tools],
        "description": summary.describe(),
    }


def read_ledger(target: str, incident: dict[str, Any], agent: str, bundle: Bundle | None) -> pm.LedgerFacts:
    """Blast radius, this incident's compensations and a sample of decision traces (blocking: run in a thread)."""
    from tourniquet.runtime.ledger import LedgerError, open_ledger, redacted_url

    meta = incident["metadata"]
    window = incident_window(incident)
    try:
        with open_ledger(target) as ledger:
            radius = ledger.blast_radius(agent, window.start, window.end)
            try:
                declarations = {agent: declarations_from_bundle(bundle)} if bundle is not None else {}
            except PlanError:
                declarations = {}
            summary = compute_blast_radius(
                window.start, window.end, {agent: radius}, declarations, window_source=window.source
            )
            compensation = ledger.compensation_counts(f"{meta['namespace']}/{meta['name']}")
            actions = ledger.actions(agent, window.start, window.end)
            by_key = {a.idempotency_key: a for a in actions}
            traces = []
            for key in pm.sample_actions([a.idempotency_key for a in actions]):
                action = by_key[key]
                trace = ledger.trace(key)
                traces.append(
                    {
                        "agent": agent,
                        **pm.trace_entry(
                            key,
                            action.tool,
                            action.args,
                            action.time,
                            action.task_id,
                            trace.parts() if trace is not None else {},
                        ),
                    }
                )
    except (LedgerError, OSError) as error:
        return pm.LedgerFacts("unreadable", f"the ledger {redacted_url(target)} could not be read: {error}")
    return pm.LedgerFacts(
        "read",
        f"from the ledger {redacted_url(target)}: {summary.describe()}",
        blast_radius=summary_dict(summary),
        compensation=compensation,
        traces=traces,
        sampled_of=len(actions),
    )


async def _revision_facts(
    api: KubeApi, namespace: str, incident: dict[str, Any], agent: str, evidence: dict[str, str]
) -> tuple[pm.RevisionFacts, Bundle | None]:
    implicated = implicated_revision(incident, evidence, agent)
    stored: dict[int, dict[str, Any]] = {}
    for cm in await api.list(CONFIGMAPS, namespace, label_selector=names.bundle_selector(agent)):
        revision = stored_revision_from_configmap(cm)
        if revision is not None:
            stored[revision.revision] = cm

    def bundle_of(revision: int | None) -> dict[str, Any] | None:
        cm = stored.get(revision) if revision is not None else None
        try:
            return json.loads((cm or {}).get("data", {}).get("bundle.json") or "null")
        except ValueError:
            return None

    good = [
        r.revision
        for r in (stored_revision_from_configmap(cm) for cm in stored.values())
        if r is not None and r.verdict == RevisionVerdict.GOOD and r.revision != implicated
    ]
    before = [r for r in good if implicated is None or r < implicated]
    known_good = max(before or good) if good else None
    implicated_bundle = bundle_of(implicated)
    bundle = None
    if implicated_bundle is not None:
        try:
            bundle = Bundle.model_validate(implicated_bundle)
        except ValueError:
            bundle = None
    return (
        pm.RevisionFacts(agent, implicated, implicated_bundle, known_good, bundle_of(known_good)),
        bundle,
    )


async def write_postmortem(
    api: KubeApi, incident: dict[str, Any], *, ledger_target: str | None = None, force: bool = False
) -> dict[str, Any] | None:
    """Make `<incident>-postmortem` hold the incident's postmortem, when one is wanted and the incident changed
    since it was written. Returns the document written (None: nothing to do)."""
    meta = incident["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    key = pm.source_key(incident)
    if key is None:
        return None
    cm_name = pm.configmap_name(name)
    existing = await api.get_or_none(CONFIGMAPS, namespace, cm_name)
    written_from = ((existing or {}).get("metadata", {}).get("annotations") or {}).get(pm.ANNOTATION_SOURCE)
    if existing is not None and not force and written_from == key:
        return None
    spec, status = incident.get("spec") or {}, incident.get("status") or {}
    evidence_name = (status.get("evidence") or {}).get("configMap")
    evidence_cm = await api.get_or_none(CONFIGMAPS, namespace, evidence_name) if evidence_name else None
    evidence = (evidence_cm or {}).get("data") or {}
    revisions, ledger = [], {}
    for agent in spec.get("agents") or []:
        facts, bundle = await _revision_facts(api, namespace, incident, agent, evidence)
        revisions.append(facts)
        agent_body = await api.get_or_none(AGENTDEPLOYMENTS, namespace, agent)
        ref = ((agent_body or {}).get("spec") or {}).get("ledger")
        if agent_body is None:
            ledger[agent] = pm.LedgerFacts("unreadable", f"AgentDeployment {agent} no longer exists")
        elif not ref:
            ledger[agent] = pm.LedgerFacts(
                "none", f"no ledger configured (spec.ledger of {agent} is unset): no blast radius, no decision trace"
            )
        else:
            target, why = await agent_ledger(api, namespace, agent_body, ledger_target)
            if target is None:
                ledger[agent] = pm.LedgerFacts("unreadable", f"{agent}'s ledger: {why}")
                continue
            ledger[agent] = await asyncio.to_thread(read_ledger, target, incident, agent, bundle)
    cases = await api.list(AGENTREGRESSIONCASES, namespace, label_selector=f"{LABEL_INCIDENT}={name[:63].rstrip('-.')}")
    doc = pm.build_postmortem(incident, revisions=revisions, ledger=ledger, cases=cases, now=micro_time(_now()))
    if existing is not None:
        with contextlib.suppress(ValueError):  # an unreadable earlier document is replaced
            doc = pm.merge_postmortem(json.loads((existing.get("data") or {}).get("postmortem.json") or "{}"), doc)
    data = {"postmortem.json": json.dumps(doc, indent=2, sort_keys=True), "postmortem.md": pm.render_markdown(doc)}
    annotations = {pm.ANNOTATION_SOURCE: key}
    labels = {
        names.LABEL_MANAGED_BY: names.MANAGED_BY,
        names.LABEL_COMPONENT: "postmortem",
        LABEL_INCIDENT: name[:63].rstrip("-."),
    }
    if existing is None:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": cm_name, "namespace": namespace, "labels": labels, "annotations": annotations},
            "data": data,
        }
        try:
            await api.create(CONFIGMAPS, namespace, body)
        except ApiError as error:
            if not error.already_exists:
                raise
            await api.patch(CONFIGMAPS, namespace, cm_name, {"metadata": {"annotations": annotations}, "data": data})
    else:
        await api.patch(CONFIGMAPS, namespace, cm_name, {"metadata": {"annotations": annotations}, "data": data})
    log.info("Wrote the postmortem of AgentIncident %s/%s into ConfigMap %s (%s)", namespace, name, cm_name, key)
    return doc


class PostmortemWriter:
    """One per operator: writes postmortems off the incidents' watch events (never holding up containment), one
    at a time per incident, from the newest body seen; a failed write is retried at the incident's next event
    and after `retry_seconds`."""

    def __init__(self, api: KubeApi, *, retry_seconds: float = 10.0) -> None:
        self.api = api
        self.retry_seconds = retry_seconds
        self._written: dict[tuple[str, str], str] = {}  # what each incident's postmortem was last written from
        self._pending: dict[tuple[str, str], dict[str, Any]] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    def on_event(self, kind: str | None, body: Mapping[str, Any], copy: Any) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if kind == "DELETED":
            self._written.pop(key, None)
            return
        source = pm.source_key(body)
        if source is None or self._written.get(key) == source:
            return
        self._pending[key] = copy()
        if key not in self._tasks:
            self._tasks[key] = asyncio.create_task(self._drain(key), name=f"tourniquet-postmortem-{key[1]}")

    async def _drain(self, key: tuple[str, str]) -> None:
        try:
            while key in self._pending:
                body = self._pending.pop(key)
                source = pm.source_key(body)
                try:
                    await write_postmortem(self.api, body, ledger_target=operator_ledger())
                    if source is not None:
                        self._written[key] = source
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # retried: the next event, or shortly
                    log.warning("Could not write the postmortem of AgentIncident %s/%s: %s", *key, error)
                    await asyncio.sleep(self.retry_seconds)
                    self._pending.setdefault(key, body)
        finally:
            self._tasks.pop(key, None)

    async def stop(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
