"""`tourniquet contain` and `tourniquet release`: open an incident by hand, and resolve it."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click

from tourniquet.cli_base import Kube, _fail, _kube_options, _run, main
from tourniquet.levers.registry import NAMES


def _now() -> datetime:
    return datetime.now(UTC)


class SeverityType(click.ParamType):
    """1, 2, 3, or the CRD's own spelling (SEV1, in any case): on-call types whichever comes first."""

    name = "1|2|3|SEV1|SEV2|SEV3"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        digits = text[3:] if text[:3].upper() == "SEV" else text
        if digits in ("1", "2", "3"):
            return f"SEV{digits}"
        self.fail(f"{value!r} is not a severity: use 1, 2 or 3 (also SEV1, sev1, …)", param, ctx)


@main.command()
@click.argument("agents", nargs=-1, required=True)
@click.option("--sev", "severity", type=SeverityType(), required=True, help="Severity: 1, 2 or 3 (also SEV1, sev1).")
@click.option("--levers", default=None, help=f"Comma-separated: {','.join(NAMES)} (default: the playbook's).")
@click.option("--tools", default=None, help="Comma-separated tools to revoke (default: every write tool).")
@click.option("--summary", default="", help="One line for the timeline.")
@click.option("--class", "incident_class", default="other", show_default=True, help="The incident class.")
@click.option("--cascade", is_flag=True, help="Also contain agents that dependsOn these.")
@click.option(
    "--name", default=None, help="Incident name (default: <agent>-oncall-<time>-<5 random characters>, unique)."
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until containment is observed.")
@click.option("--timeout", type=float, default=30, show_default=True)
@_kube_options
def contain(
    agents: tuple[str, ...],
    severity: str,
    levers: str | None,
    tools: str | None,
    summary: str,
    incident_class: str,
    cascade: bool,
    name: str | None,
    wait: bool,
    timeout: float,
    kube: Kube,
) -> None:
    """Open an AgentIncident on AGENTS now, and wait until its levers are observed applied.

    Every agent must exist, and the levers and tools must make sense for them: otherwise nothing is
    created, and the error says what to fix."""
    from pydantic import ValidationError

    from tourniquet.domain.errors import describe_validation_error
    from tourniquet.models import AgentIncidentSpec

    spec: dict[str, Any] = {
        "agents": list(agents),
        "severity": severity,
        "class": incident_class,
        "summary": summary,
        "cascade": cascade,
    }
    if levers:
        spec["contain"] = [lever.strip() for lever in levers.split(",") if lever.strip()]
        unknown = [lever for lever in spec["contain"] if lever not in NAMES]
        if unknown:
            _fail(f"unknown lever {', '.join(unknown)}; the levers are {', '.join(NAMES)}")
    if tools:
        spec["revokeTools"] = [tool.strip() for tool in tools.split(",") if tool.strip()]
    try:
        parsed = AgentIncidentSpec.model_validate(spec)
    except ValidationError as error:
        _fail(describe_validation_error(error))
        return
    ns = kube.namespace
    # Without --name, the API server completes a unique name (generateName): two calls in the same second
    # open two incidents.
    metadata = {"name": name} if name else {"generateName": f"{agents[0]}-oncall-{_now():%Y%m%dt%H%M%S}-"}
    body = {
        "apiVersion": "tourniquet.dev/v1alpha1",
        "kind": "AgentIncident",
        "metadata": {**metadata, "namespace": ns},
        "spec": spec,
    }
    _run(lambda: _contain(body, parsed, wait, timeout, kube))


async def _contain(body: dict[str, Any], spec: Any, wait: bool, timeout: float, kube: Kube) -> None:
    from tourniquet.adapters.kube import AGENTINCIDENTS, ApiError
    from tourniquet.domain.incident import micro_time
    from tourniquet.domain.names import ANNOTATION_OPENED_AT

    namespace = body["metadata"]["namespace"]
    api = await kube.api()
    try:
        refused = await _contain_problems(api, namespace, spec)
        if refused:
            _fail(f"{refused}; nothing was created")
            return
        # The incident's timings start here, to the microsecond (its creationTimestamp has whole seconds).
        body["metadata"]["annotations"] = {ANNOTATION_OPENED_AT: micro_time(_now())}
        try:
            created = await api.create(AGENTINCIDENTS, namespace, body)
        except ApiError as error:
            if error.already_exists and body["metadata"].get("name"):
                name = body["metadata"]["name"]
                _fail(
                    f"AgentIncident {name} already exists in namespace {namespace}: choose another --name, or "
                    f"leave --name out for a unique one (kubectl get agentincident {name} -n {namespace} "
                    "shows the existing one)"
                )
            raise
        name = created["metadata"]["name"]
        click.echo(f"Opened AgentIncident {name} in namespace {namespace}.")
        if wait:
            # Done when contained, refused, or contained as far as it can be: a named agent is missing.
            status = await _wait_incident(
                api,
                namespace,
                name,
                timeout,
                lambda s: s.get("phase") in ("Contained", "Invalid") or _contained_reason(s) == "AgentsMissing",
            )
            _print_incident(status)
            if status.get("phase") == "Invalid":
                sys.exit(1)
            if _agents_missing(status):
                _fail(
                    f"AgentIncident {name} did not contain every agent it names; it stays open, and the operator "
                    "contains them once they exist"
                )
    except ApiError as error:
        _fail(f"Kubernetes API: {error.message or error}")
    finally:
        await api.close()


async def _contain_problems(api: Any, namespace: str, spec: Any) -> str | None:
    """What would make the incident refused (a missing agent, an unknown tool, drain without consumers), read
    before anything is created: an Invalid incident left behind contains nothing."""
    import difflib

    from pydantic import ValidationError

    from tourniquet.adapters.kube import AGENTDEPLOYMENTS
    from tourniquet.domain.containment import incident_problems
    from tourniquet.models import AgentDeploymentSpec

    bodies = {agent: await api.get_or_none(AGENTDEPLOYMENTS, namespace, agent) for agent in spec.agents}
    missing = [agent for agent, body in bodies.items() if body is None]
    if missing:
        existing = sorted(a["metadata"]["name"] for a in await api.list(AGENTDEPLOYMENTS, namespace))
        clauses = []
        for agent in missing:
            close = difflib.get_close_matches(agent, existing, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            clauses.append(f"AgentDeployment {agent} not found in namespace {namespace}{hint}")
        there = ", ".join(existing) if existing else "none: is it the right namespace (-n)?"
        return f"{'; '.join(clauses)}. The AgentDeployments in {namespace}: {there}"
    agents: dict[str, Any] = {}
    for agent, body in bodies.items():
        try:
            agents[agent] = AgentDeploymentSpec.model_validate((body or {}).get("spec") or {})
        except ValidationError:
            continue  # an invalid agent's own status says what is wrong with it
    if not agents:
        return None
    problems = incident_problems(spec.model_copy(update={"agents": list(agents)}), agents, namespace)
    return f"refused: {'; '.join(problems)}" if problems else None


@main.command()
@click.argument("incident")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--timeout", type=float, default=30, show_default=True)
@_kube_options
def release(incident: str, wait: bool, timeout: float, kube: Kube) -> None:
    """Resolve INCIDENT: release its levers (those another open incident holds stay in force)."""
    _run(lambda: _release(incident, kube, wait, timeout))


async def _release(incident: str, kube: Kube, wait: bool, timeout: float) -> None:
    from tourniquet.adapters.kube import AGENTINCIDENTS, ApiError

    namespace = kube.namespace
    api = await kube.api()
    try:
        if await api.get_or_none(AGENTINCIDENTS, namespace, incident) is None:
            _fail(f"AgentIncident {incident} not found in namespace {namespace}")
        await api.patch(AGENTINCIDENTS, namespace, incident, {"spec": {"resolved": True}})
        click.echo(f"Resolved AgentIncident {incident}; releasing its levers.")
        if wait:
            _print_incident(
                await _wait_incident(api, namespace, incident, timeout, lambda s: s.get("phase") == "Resolved")
            )
    except ApiError as error:
        _fail(f"Kubernetes API: {error.message or error}")
    finally:
        await api.close()


async def _wait_incident(api: Any, namespace: str, name: str, timeout: float, done: Callable[[dict], bool]) -> dict:
    from tourniquet.adapters.kube import AGENTINCIDENTS

    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = (await api.get(AGENTINCIDENTS, namespace, name)).get("status") or {}
        if done(status):
            return status
        await asyncio.sleep(0.2)
    _print_incident(status)
    _fail(f"timed out after {timeout:.0f}s; is the operator running? (kubectl get agentincident {name} -n {namespace})")
    return status


def _contained_reason(status: dict[str, Any]) -> str | None:
    return next((c.get("reason") for c in status.get("conditions") or [] if c.get("type") == "Contained"), None)


def _agents_missing(status: dict[str, Any]) -> str | None:
    """The AgentsMissing condition's message while it is True: named agents that are not contained."""
    found: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "AgentsMissing"), {})
    return str(found.get("message", "")) if found.get("status") == "True" else None


# What status.timings.startedFrom says the timings are measured from.
_STARTS = {
    "openedAt": "it was opened",
    "firstSeen": "the operator first saw it",
    "creationTimestamp": "it was created (its creationTimestamp, to the second: the operator saw it late)",
}


def _print_incident(status: dict[str, Any]) -> None:
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    click.echo(f"phase: {status.get('phase', 'Unknown')}")
    if conditions.get("Accepted", {}).get("status") == "False":
        click.echo(f"  refused: {conditions['Accepted'].get('message')}")
    missing = _agents_missing(status)
    if missing:
        click.secho(f"  WARNING: {missing}", fg="yellow", bold=True)
    for lever in status.get("levers") or []:
        click.echo(f"  {lever.get('agent')}/{lever['name']}: {lever['state']} — {lever.get('detail', '')}")
    timings = status.get("timings") or {}
    if "containedSeconds" in timings:
        since = _STARTS.get(str(timings.get("startedFrom")), "it was created")
        click.echo(f"  contained {timings['containedSeconds']:.2f}s after {since}")
