"""`tourniquet readiness` and `tourniquet drill`: whether an agent is ready for an incident (the checklist), and a
drill that proves it (contain, measure, release). Importing this module (which `tourniquet.cli` does) adds them to
the main group."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import click

from tourniquet.cli_base import Kube, _agent_or_fail, _fail, _kube_options, _run, main


@click.command()
@click.argument("agent", required=False)
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--strict", is_flag=True, help="Exit 1 unless every agent shown is 5/5 (for CI).")
@_kube_options
def readiness(
    agent: str | None,
    output: str,
    strict: bool,
    kube: Kube,
) -> None:
    """The readiness checklist of AGENT (or of every agent): what is missing, and how to fix it."""
    _run(lambda: _readiness(agent, kube, output, strict))


async def _readiness(agent: str | None, kube: Kube, output: str, strict: bool) -> None:
    import json

    from tourniquet.adapters.kube import AGENTDEPLOYMENTS, ApiError

    namespace = kube.namespace
    api = await kube.api()
    try:
        if agent:
            agents = [await _agent_or_fail(api, namespace, agent)]
        else:
            agents = sorted(await api.list(AGENTDEPLOYMENTS, namespace), key=lambda a: a["metadata"]["name"])
    except ApiError as error:
        _fail(f"Kubernetes API: {error.message or error}")
        return
    finally:
        await api.close()
    checklists = {a["metadata"]["name"]: (a.get("status") or {}).get("readiness") for a in agents}
    if output == "json":
        click.echo(json.dumps(checklists, indent=2))
    elif not agents:
        click.echo(f"No AgentDeployments in namespace {namespace}.")
    elif agent:
        _print_checklist(agent, checklists[agent])
    else:
        rows = [("AGENT", "READINESS", "MISSING")]
        for name, checklist in checklists.items():
            missing = [i["name"] for i in (checklist or {}).get("items") or [] if not i.get("ready")]
            summary = (checklist or {}).get("summary") or "-"
            rows.append((name, summary, ", ".join(missing) if checklist else "not checked yet"))
        widths = [max(len(r[i]) for r in rows) for i in range(2)]
        for row in rows:
            click.echo(f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}")
        click.echo("\nkubectl tourniquet readiness AGENT says how to fix each.")
    if strict and any((c or {}).get("ready") != len((c or {}).get("items") or [None]) for c in checklists.values()):
        sys.exit(1)


def _print_checklist(agent: str, checklist: dict[str, Any] | None) -> None:
    if not checklist:
        click.echo(f"{agent}: the operator has not checked its readiness yet (is it running?)")
        return
    click.echo(f"{agent}: {checklist.get('summary')} ready")
    for item in checklist.get("items") or []:
        mark = "ok     " if item.get("ready") else "MISSING"
        click.echo(f"  {mark}  {item['name']}: {item.get('message', '')}")
        if not item.get("ready") and item.get("fix"):
            click.echo(f"           fix: {item['fix']}")


# ---------------------------------------------------------------- drills


@click.command()
@click.argument("agent")
@click.option(
    "--levers",
    default="shadow,revokeTools",
    show_default=True,
    help="Comma-separated: shadow, revokeTools, and drain only if you mean it (it kills the agent's pods).",
)
@click.option("--tools", default=None, help="Comma-separated tools revokeTools revokes (default: every write tool).")
@click.option("--limit", type=float, default=60, show_default=True, help="Contain and be acknowledged within this.")
@click.option("--name", default=None, help="The AgentDrill's name (default: <agent>-drill-<5 random characters>).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the result.")
@click.option("--timeout", type=float, default=180, show_default=True)
@_kube_options
def drill(
    agent: str,
    levers: str,
    tools: str | None,
    limit: float,
    name: str | None,
    wait: bool,
    timeout: float,
    kube: Kube,
) -> None:
    """Run a drill on AGENT now: contain it (shadow and revoke), measure the time to containment and to the runtime's
    acknowledgement, check the evidence, release. Exits 1 when it failed, naming the lever that did not land (0 when
    it was skipped because a real incident is open on the agent: it says so)."""
    from pydantic import ValidationError

    from tourniquet.domain.errors import describe_validation_error
    from tourniquet.models.review import AgentDrillSpec

    spec: dict[str, Any] = {
        "agent": agent,
        "levers": [lever.strip() for lever in levers.split(",") if lever.strip()],
        "limitSeconds": limit,
    }
    if tools:
        spec["tools"] = [tool.strip() for tool in tools.split(",") if tool.strip()]
    try:
        AgentDrillSpec.model_validate(spec)
    except ValidationError as error:
        _fail(describe_validation_error(error))
    metadata = {"name": name} if name else {"generateName": f"{agent[:50]}-drill-"}
    body = {"apiVersion": "tourniquet.dev/v1alpha1", "kind": "AgentDrill", "metadata": metadata, "spec": spec}
    _run(lambda: _drill(body, kube, wait, timeout))


async def _drill(body: dict[str, Any], kube: Kube, wait: bool, timeout: float) -> None:
    from tourniquet.adapters.kube import AGENTDRILLS, ApiError

    agent = body["spec"]["agent"]
    namespace = kube.namespace
    api = await kube.api()
    try:
        await _agent_or_fail(api, namespace, agent, "; nothing was created")
        try:
            created = await api.create(
                AGENTDRILLS, namespace, {**body, "metadata": {**body["metadata"], "namespace": namespace}}
            )
        except ApiError as error:
            if error.already_exists:
                _fail(
                    f"AgentDrill {body['metadata'].get('name')} already exists in namespace {namespace}: "
                    "choose another --name"
                )
            raise
        name = created["metadata"]["name"]
        click.echo(f"Started drill {name} on {agent} ({', '.join(body['spec']['levers'])}).")
        if not wait:
            return
        deadline = time.monotonic() + timeout
        run: dict[str, Any] = {}
        while time.monotonic() < deadline:
            run = ((await api.get(AGENTDRILLS, namespace, name)).get("status") or {}).get("lastRun") or {}
            if run.get("result") in ("Passed", "Failed", "Skipped"):
                break
            await asyncio.sleep(0.5)
        else:
            _fail(
                f"timed out after {timeout:.0f}s waiting for drill {name}; is the operator running? "
                f"(kubectl get agentdrill {name})"
            )
        _print_run(run)
        if run.get("result") == "Failed":
            sys.exit(1)
    except ApiError as error:
        _fail(f"Kubernetes API: {error.message or error}")
    finally:
        await api.close()


def _print_run(run: dict[str, Any]) -> None:
    click.echo(f"{run.get('result')}: {run.get('message', '')}")
    for lever in run.get("levers") or []:
        applied = (
            f"applied in {lever['appliedSeconds']:.2f}s" if lever.get("appliedSeconds") is not None else "NOT applied"
        )
        acknowledged = ""
        if lever.get("acknowledged") is not None:
            seconds = lever.get("acknowledgedSeconds")
            acknowledged = (
                f", acknowledged by the runtime in {seconds:.2f}s"
                if lever.get("acknowledged")
                else ", NOT acknowledged"
            )
        click.echo(f"  {lever['name']}: {applied}{acknowledged}")
    for check in ("evidence", "trace"):
        value = run.get(check) or {}
        if value:
            mark = {True: "ok", False: "FAILED", None: "not checked"}[value.get("ok")]
            click.echo(f"  {check}: {mark}: {value.get('detail', '')}")
    if run.get("incident"):
        click.echo(f"  incident {run['incident']}: {'released' if run.get('released') else 'NOT released'}")


def register(group: click.Group) -> None:
    for command in (readiness, drill):
        group.add_command(command)


register(main)
