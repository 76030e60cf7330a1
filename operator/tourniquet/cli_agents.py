"""`tourniquet rollback` and `tourniquet status`: an agent's bundle revisions, and what the agents and incidents
report."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import click

from tourniquet.cli_base import Kube, _agent_or_fail, _fail, _kube_options, _run, main
from tourniquet.cli_incidents import _agents_missing


@main.command()
@click.argument("agent")
@click.option("--to", "target", required=False, help="A revision number, or lastKnownGood.")
@click.option("--clear", is_flag=True, help="Remove the rollback: run what spec.bundle describes again.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the rollback is observed.")
@click.option("--timeout", type=float, default=60, show_default=True)
@_kube_options
def rollback(
    agent: str,
    target: str | None,
    clear: bool,
    wait: bool,
    timeout: float,
    kube: Kube,
) -> None:
    """Roll AGENT's bundle back to a revision (sets spec.rollback; GitOps users commit that field instead)."""
    if clear == bool(target):
        _fail("give exactly one of --to REVISION|lastKnownGood or --clear")
    _run(lambda: _rollback(agent, kube, target, wait, timeout))


async def _rollback(agent: str, kube: Kube, target: str | None, wait: bool, timeout: float) -> None:
    from tourniquet.adapters.kube import AGENTDEPLOYMENTS, CONFIGMAPS, ApiError
    from tourniquet.domain import bundles, names
    from tourniquet.models import RollbackTarget

    namespace = kube.namespace
    api = await kube.api()
    try:
        body = await _agent_or_fail(api, namespace, agent)
        if target is None:
            outcome, revision = await _predict_clear(api, namespace, agent, body)
            if revision is None:
                _fail(f"{outcome}; nothing was changed")
                return
            await api.patch(AGENTDEPLOYMENTS, namespace, agent, {"spec": {"rollback": None}})
            click.echo(f"Cleared the rollback of {agent}: {outcome}.")
            if wait and outcome.startswith(f"{agent} runs spec.bundle"):
                await _wait_revision(api, namespace, agent, revision, timeout)
            return
        wanted = RollbackTarget(to="lastKnownGood") if target in ("lastKnownGood", "lkg") else None
        if wanted is None:
            try:
                wanted = RollbackTarget(revision=int(target))
            except ValueError:
                _fail(f"--to takes a revision number or lastKnownGood, not {target!r}")
                return
        cms = await api.list(CONFIGMAPS, namespace, label_selector=names.bundle_selector(agent))
        stored = [s for s in map(bundles.stored_revision_from_configmap, cms) if s]
        try:
            chosen = bundles.resolve_rollback(wanted, stored)
        except bundles.RollbackRefused as refused:
            _fail(f"rollback refused: {refused}")
            return
        # A merge patch: null the other key, so switching between revision and lastKnownGood works.
        await api.patch(
            AGENTDEPLOYMENTS,
            namespace,
            agent,
            {"spec": {"rollback": {"revision": None, "to": None, **wanted.to_api()}}},
        )
        click.echo(f"Asked {agent} to run revision {chosen.revision} (ConfigMap {chosen.name}).")
        if wait:
            await _wait_revision(api, namespace, agent, chosen.revision, timeout)
    except ApiError as error:
        _fail(f"Kubernetes API: {error}")
    finally:
        await api.close()


async def _wait_revision(api: Any, namespace: str, agent: str, revision: int, timeout: float) -> None:
    from tourniquet.adapters.kube import AGENTDEPLOYMENTS

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = (await api.get(AGENTDEPLOYMENTS, namespace, agent)).get("status") or {}
        if (status.get("bundle") or {}).get("revision") == revision:
            click.echo(f"{agent} runs revision {revision}; its consumers' pod templates name it.")
            return
        await asyncio.sleep(0.5)
    _fail(
        f"timed out after {timeout:.0f}s waiting for {agent} to report revision {revision}; "
        f"is the operator running? (kubectl get agentdeployment {agent} -n {namespace} -o yaml)"
    )


async def _predict_clear(api: Any, namespace: str, agent: str, body: dict[str, Any]) -> tuple[str, int | None]:
    """What clearing spec.rollback would make the agent run, decided as the operator decides it (the same
    pure planner, on the same revisions and open incidents): a sentence, and the revision it would run
    then (None: clearing would leave the agent on what it runs, refused)."""
    from pydantic import ValidationError

    from tourniquet.adapters.kube import AGENTINCIDENTS, CONFIGMAPS
    from tourniquet.domain import bundles, names
    from tourniquet.domain.agent import plan_bundle
    from tourniquet.domain.containment import incident_view, plan_containment
    from tourniquet.domain.errors import describe_validation_error
    from tourniquet.models import AgentDeploymentSpec

    try:
        spec = AgentDeploymentSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        return f"the spec of {agent} is invalid ({describe_validation_error(error)}): fix it first", None
    cms = await api.list(CONFIGMAPS, namespace, label_selector=names.bundle_selector(agent))
    stored = [s for s in map(bundles.stored_revision_from_configmap, cms) if s]
    views = [v for v in map(incident_view, await api.list(AGENTINCIDENTS, namespace)) if v is not None]
    bundle = (body.get("status") or {}).get("bundle") or {}
    current = bundle.get("revision")
    highest = max([0, current or 0, bundle.get("specRevision") or 0, *(s.revision for s in stored)])
    plan = plan_bundle(
        spec.model_copy(update={"rollback": None}),
        stored,
        highest,
        current=current,
        containment=plan_containment(agent, spec, views),
    )
    if not plan.pinned and plan.reason in ("RevisionBad", "BundleTooLarge"):  # spec.bundle cannot run
        where = f"stay on revision {current}" if current else "run no revision"
        return f"{agent} would {where}: {plan.message}", None
    if not plan.pinned:  # an open incident's refused rollback: clearing spec.rollback does not change it
        return f"{agent} keeps running revision {current}: {plan.message}", current
    if plan.frozen:
        return f"{plan.frozen}; {agent} keeps running revision {current} for now", plan.active_revision
    if plan.reason == "RolledBack":  # an open incident's rollback: clearing spec.rollback does not move it
        return f"{plan.message}, until that incident is resolved", plan.active_revision
    return f"{agent} runs spec.bundle (revision {plan.active_revision}) again", plan.active_revision


@main.command()
@click.argument("agent", required=False)
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@_kube_options
def status(agent: str | None, output: str, kube: Kube) -> None:
    """What each agent runs, whether it is ready, and what is contained since when."""
    _run(lambda: _status(agent, kube, output))


async def _status(agent: str | None, kube: Kube, output: str) -> None:
    from tourniquet.adapters.kube import AGENTDEPLOYMENTS, AGENTINCIDENTS, ApiError

    namespace = kube.namespace
    api = await kube.api()
    incidents: list[dict[str, Any]] = []
    try:
        if agent:
            agents = [await _agent_or_fail(api, namespace, agent)]
        else:
            agents = await api.list(AGENTDEPLOYMENTS, namespace)
        incidents = await api.list(AGENTINCIDENTS, namespace)
    except ApiError as error:
        _fail(f"Kubernetes API: {error}")
        return
    finally:
        await api.close()
    rows = [_status_row(a) for a in agents]
    open_incidents = [_incident_row(i) for i in incidents if not (i.get("spec") or {}).get("resolved")]
    if agent:
        open_incidents = [i for i in open_incidents if agent in i["agents"]]
    if output == "json":
        click.echo(json.dumps({"agents": rows, "incidents": open_incidents}, indent=2))
        return
    if not rows:
        click.echo(f"No AgentDeployments in namespace {namespace}.")
        return
    header = ("AGENT", "REVISION", "LKG", "READY", "CONTAINED", "DETAIL")
    table = [header] + [
        (r["agent"], str(r["revision"] or "-"), str(r["lastKnownGood"] or "-"), r["ready"], r["contained"], r["detail"])
        for r in rows
    ]
    _table(table)
    if open_incidents:
        click.echo("")
        _table(
            [("INCIDENT", "SEVERITY", "PHASE", "AGENTS", "SINCE", "LEVERS")]
            + [
                (i["name"], i["severity"], i["phase"], ",".join(i["agents"]), i["since"] or "-", i["levers"])
                for i in open_incidents
            ]
        )
        for incident in open_incidents:
            if incident["agentsMissing"]:
                click.secho(f"WARNING: {incident['name']}: {incident['agentsMissing']}", fg="yellow", bold=True)
    else:
        click.echo("\nNo open incidents.")


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + str(row[-1]))


def _incident_row(body: dict[str, Any]) -> dict[str, Any]:
    status = body.get("status") or {}
    spec = body.get("spec") or {}
    contained: dict[str, Any] = next((c for c in status.get("conditions") or [] if c["type"] == "Contained"), {})
    levers = ", ".join(f"{lv['name']}:{lv['state']}" for lv in status.get("levers") or [])
    return {
        "name": body["metadata"]["name"],
        "severity": spec.get("severity"),
        "phase": status.get("phase") or "Pending",
        "agents": status.get("agents") or spec.get("agents") or [],
        "since": contained.get("lastTransitionTime") if contained.get("status") == "True" else None,
        "levers": levers or "-",
        "agentsMissing": _agents_missing(status),  # named agents not contained (not found), or None
    }


def _status_row(body: dict[str, Any]) -> dict[str, Any]:
    status = body.get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    ready = conditions.get("Ready") or {}
    contained = conditions.get("Contained") or {}
    bundle = status.get("bundle") or {}
    return {
        "agent": body["metadata"]["name"],
        "revision": bundle.get("revision"),
        "lastKnownGood": bundle.get("lastKnownGood"),
        "ready": ready.get("status", "Unknown"),
        "contained": contained.get("status", "False"),
        "detail": ready.get("message", "") if ready.get("status") != "True" else contained.get("message", ""),
        "since": contained.get("lastTransitionTime") if contained.get("status") == "True" else None,
    }
