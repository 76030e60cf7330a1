"""`tourniquet postmortem`: an incident's postmortem as the operator wrote it (a draft, on demand, while the incident
is open). Importing this module (which `tourniquet.cli` does) adds it to the main group."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import click

from tourniquet.cli_base import Kube, _fail, _kube_options, _run, main
from tourniquet.cli_incidents import _now


@click.command()
@click.argument("incident")
@click.option("-o", "--output", type=click.Choice(["md", "json"]), default="md", show_default=True)
@click.option(
    "--refresh",
    is_flag=True,
    help="Ask the operator to write it again now (it does so by itself for an open incident).",
)
@click.option("--timeout", type=float, default=60, show_default=True, help="How long to wait for the operator.")
@_kube_options
def postmortem(
    incident: str,
    output: str,
    refresh: bool,
    timeout: float,
    kube: Kube,
) -> None:
    """Print INCIDENT's postmortem (the ConfigMap <incident>-postmortem): summary, timeline, levers, blast radius,
    the implicated revision's diff, decision traces, review questions. For an open incident the operator writes a
    draft on demand (this command asks for it and waits); a resolved incident's is written when it resolves."""
    _run(lambda: _postmortem(incident, kube, output, refresh, timeout))


async def _postmortem(incident: str, kube: Kube, output: str, refresh: bool, timeout: float) -> None:
    from tourniquet.adapters.kube import AGENTINCIDENTS, CONFIGMAPS, ApiError
    from tourniquet.domain import postmortem as pm
    from tourniquet.domain.incident import micro_time

    namespace = kube.namespace
    api = await kube.api()
    try:
        name = pm.configmap_name(incident)
        body = await api.get_or_none(AGENTINCIDENTS, namespace, incident)
        existing = await api.get_or_none(CONFIGMAPS, namespace, name)
        if body is None:
            if existing is None:
                _fail(f"AgentIncident {incident} not found in namespace {namespace}, and no postmortem {name}")
                return
            _print_postmortem(existing, output)
            return
        wanted: str | None = None  # the source the postmortem must have been written from
        resolved = bool((body.get("spec") or {}).get("resolved"))
        if refresh or not resolved:
            stamp = micro_time(_now())
            await api.patch(
                AGENTINCIDENTS,
                namespace,
                incident,
                {"metadata": {"annotations": {pm.ANNOTATION_REQUESTED: stamp}}},
            )
            wanted = f"requested={stamp}"
            if not resolved:
                click.echo(f"{incident} is still open: asked the operator for a draft.", err=True)
        deadline = time.monotonic() + timeout
        while True:
            source = ((existing or {}).get("metadata", {}).get("annotations") or {}).get(pm.ANNOTATION_SOURCE, "")
            if existing is not None and (wanted is None or source.endswith(wanted)):
                break
            if time.monotonic() > deadline:
                _fail(
                    f"timed out after {timeout:.0f}s waiting for the operator to write ConfigMap {name}; is it "
                    "running? (kubectl get agentincident " + incident + ")"
                )
            await asyncio.sleep(0.5)
            existing = await api.get_or_none(CONFIGMAPS, namespace, name)
        _print_postmortem(existing or {}, output)
    except ApiError as error:
        _fail(f"Kubernetes API: {error.message or error}")
    finally:
        await api.close()


def _print_postmortem(cm: dict[str, Any], output: str) -> None:
    data = cm.get("data") or {}
    click.echo(data.get("postmortem.json" if output == "json" else "postmortem.md", ""), nl=False)


def register(group: click.Group) -> None:
    group.add_command(postmortem)


register(main)
