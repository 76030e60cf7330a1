"""`tourniquet` (also `kubectl tourniquet`): run the operator, the sandbox, and the on-call commands."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

T = TypeVar("T")


def _fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


def _now() -> datetime:
    return datetime.now(UTC)


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


def _kube_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--kubeconfig", envvar="KUBECONFIG", default=None, help="Path to a kubeconfig file.")(fn)
    fn = click.option("--context", "kube_context", default=None, help="The kubeconfig context to use.")(fn)
    fn = click.option("-n", "--namespace", default=None, help="Namespace (default: the context's, else default).")(fn)
    return fn


def _namespace(namespace: str | None, kubeconfig: str | None, kube_context: str | None) -> str:
    if namespace:
        return namespace
    try:
        import yaml

        path = Path(kubeconfig or os.path.expanduser("~/.kube/config")).expanduser()
        config = yaml.safe_load(path.read_text()) or {}
        current = kube_context or config.get("current-context")
        for entry in config.get("contexts") or []:
            if entry.get("name") == current:
                return str((entry.get("context") or {}).get("namespace") or "default")
    except (OSError, ValueError):
        pass
    return "default"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tourniquet-operator")
def main() -> None:
    """Tourniquet: stop a misbehaving AI agent in seconds, pin its bundles, and roll back cleanly."""


# ---------------------------------------------------------------- operator


@main.command()
@click.option("-n", "--namespace", "namespaces", multiple=True, help="Watch only these namespaces (repeatable).")
@click.option("-A", "--all-namespaces", is_flag=True, help="Watch every namespace (the default without -n).")
@click.option("--liveness", default="http://0.0.0.0:8080/healthz", show_default=True, help="Kopf probe endpoint.")
@click.option("--priority", type=int, default=0, help="Kopf peering priority (when running several replicas).")
@click.option("--peering", default=None, help="Kopf peering object name; standalone when unset.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="TOURNIQUET_LOG_FORMAT",
    help="json: one object per line (time, level, logger, message, object). Env: TOURNIQUET_LOG_FORMAT.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logs.")
def run(
    namespaces: tuple[str, ...],
    all_namespaces: bool,
    liveness: str,
    priority: int,
    peering: str | None,
    log_format: str,
    verbose: bool,
) -> None:
    """Run the operator against the cluster in $KUBECONFIG (or in-cluster)."""
    from tourniquet import logs
    from tourniquet.runner import run_operator

    logs.configure(log_format, verbose=verbose)
    _run(lambda: run_operator(list(namespaces), liveness=liveness, priority=priority, peering=peering))


# ---------------------------------------------------------------- CRDs


@main.command()
@click.option("--check", is_flag=True, help="Fail if the committed CRDs differ from the models.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True)
def crds(check: bool, root: Path) -> None:
    """Generate crds/ (and the chart's copy) from the pydantic models."""
    from tourniquet import crdgen

    if check:
        problems = crdgen.check_crds(root)
        for problem in problems:
            click.secho(problem, fg="red", err=True)
        if problems:
            sys.exit(1)
        click.echo("CRDs are up to date.")
        return
    for path in crdgen.write_crds(root):
        click.echo(f"wrote {path}")


# ---------------------------------------------------------------- sandbox


@main.command()
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".sandbox"),
    show_default=True,
    help="Where the kubeconfig is written.",
)
@click.option("--port", type=int, default=0, help="API server port (default: a free one).")
@click.option("--examples/--no-examples", default=True, show_default=True, help="Apply examples/ at start.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="TOURNIQUET_LOG_FORMAT",
    help="The operator's log format, as for `tourniquet run`.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logs.")
def sandbox(workdir: Path, port: int, examples: bool, log_format: str, verbose: bool) -> None:
    """Run an embedded Kubernetes API server with the CRDs and the operator: no cluster needed.

    Everything binds loopback: the API server on --port (a free one by default), the operator's /metrics
    and Alertmanager receiver on TOURNIQUET_HTTP_PORT (9090), or a free port when that one is taken."""
    from tourniquet.sandbox.run import EmulatorMissing, run_sandbox

    try:
        run_sandbox(workdir=workdir, port=port, examples=examples, log_format=log_format, verbose=verbose)
    except EmulatorMissing as e:
        raise click.ClickException(str(e)) from None


# ---------------------------------------------------------------- on-call


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
    kubeconfig: str | None,
    kube_context: str | None,
    namespace: str | None,
) -> None:
    """Roll AGENT's bundle back to a revision (sets spec.rollback; GitOps users commit that field instead)."""
    if clear == bool(target):
        _fail("give exactly one of --to REVISION|lastKnownGood or --clear")
    ns = _namespace(namespace, kubeconfig, kube_context)
    _run(lambda: _rollback(agent, ns, target, wait, timeout, kubeconfig, kube_context))


async def _rollback(
    agent: str,
    namespace: str,
    target: str | None,
    wait: bool,
    timeout: float,
    kubeconfig: str | None,
    kube_context: str | None,
) -> None:
    from tourniquet.adapters.kube import AGENTDEPLOYMENTS, CONFIGMAPS, ApiError, KubeApi
    from tourniquet.domain import bundles, names
    from tourniquet.models import RollbackTarget

    api = await KubeApi.from_config(kubeconfig, kube_context)
    try:
        body = await api.get_or_none(AGENTDEPLOYMENTS, namespace, agent)
        if body is None:
            _fail(f"AgentDeployment {agent} not found in namespace {namespace}")
            return
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


LEVERS = ("shadow", "revokeTools", "drain")


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
@click.option("--levers", default=None, help="Comma-separated: shadow,revokeTools,drain (default: the playbook's).")
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
    kubeconfig: str | None,
    kube_context: str | None,
    namespace: str | None,
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
        unknown = [lever for lever in spec["contain"] if lever not in LEVERS]
        if unknown:
            _fail(f"unknown lever {', '.join(unknown)}; the levers are {', '.join(LEVERS)}")
    if tools:
        spec["revokeTools"] = [tool.strip() for tool in tools.split(",") if tool.strip()]
    try:
        parsed = AgentIncidentSpec.model_validate(spec)
    except ValidationError as error:
        _fail(describe_validation_error(error))
        return
    ns = _namespace(namespace, kubeconfig, kube_context)
    # Without --name, the API server completes a unique name (generateName): two calls in the same second
    # open two incidents.
    metadata = {"name": name} if name else {"generateName": f"{agents[0]}-oncall-{_now():%Y%m%dt%H%M%S}-"}
    body = {
        "apiVersion": "tourniquet.dev/v1alpha1",
        "kind": "AgentIncident",
        "metadata": {**metadata, "namespace": ns},
        "spec": spec,
    }
    _run(lambda: _contain(body, parsed, wait, timeout, kubeconfig, kube_context))


async def _contain(
    body: dict[str, Any],
    spec: Any,
    wait: bool,
    timeout: float,
    kubeconfig: str | None,
    kube_context: str | None,
) -> None:
    from tourniquet.adapters.kube import AGENTINCIDENTS, ApiError, KubeApi
    from tourniquet.domain.incident import micro_time
    from tourniquet.domain.names import ANNOTATION_OPENED_AT

    namespace = body["metadata"]["namespace"]
    api = await KubeApi.from_config(kubeconfig, kube_context)
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
def release(
    incident: str, wait: bool, timeout: float, kubeconfig: str | None, kube_context: str | None, namespace: str | None
) -> None:
    """Resolve INCIDENT: release its levers (those another open incident holds stay in force)."""
    ns = _namespace(namespace, kubeconfig, kube_context)
    _run(lambda: _release(incident, ns, wait, timeout, kubeconfig, kube_context))


async def _release(
    incident: str, namespace: str, wait: bool, timeout: float, kubeconfig: str | None, kube_context: str | None
) -> None:
    from tourniquet.adapters.kube import AGENTINCIDENTS, ApiError, KubeApi

    api = await KubeApi.from_config(kubeconfig, kube_context)
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


# What status.timings.startedFrom says the timings are measured from.
_STARTS = {
    "openedAt": "it was opened",
    "firstSeen": "the operator first saw it",
    "creationTimestamp": "it was created (its creationTimestamp, to the second: the operator saw it late)",
}


@main.command()
@click.argument("agent", required=False)
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@_kube_options
def status(
    agent: str | None, output: str, kubeconfig: str | None, kube_context: str | None, namespace: str | None
) -> None:
    """What each agent runs, whether it is ready, and what is contained since when."""
    ns = _namespace(namespace, kubeconfig, kube_context)
    _run(lambda: _status(agent, ns, output, kubeconfig, kube_context))


async def _status(
    agent: str | None, namespace: str, output: str, kubeconfig: str | None, kube_context: str | None
) -> None:
    from tourniquet.adapters.kube import AGENTDEPLOYMENTS, AGENTINCIDENTS, ApiError, KubeApi

    api = await KubeApi.from_config(kubeconfig, kube_context)
    incidents: list[dict[str, Any]] = []
    try:
        if agent:
            found = await api.get_or_none(AGENTDEPLOYMENTS, namespace, agent)
            if found is None:
                _fail(f"AgentDeployment {agent} not found in namespace {namespace}")
            agents = [found] if found else []
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


# -- undo: blast radius, decision traces, compensation -----------------------------------------------------------


def _ledger_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--ledger", default=None, help="The ledger's URL or SQLite file (default: TOURNIQUET_LEDGER)."
    )(fn)


def _undo_context(incident: str, namespace: str, kubeconfig: str | None, kube_context: str | None) -> Any:
    from tourniquet.adapters.kube import ApiError, KubeApi
    from tourniquet.undo import UndoError, load_context

    async def load() -> Any:
        api = await KubeApi.from_config(kubeconfig, kube_context)
        try:
            return await load_context(api, namespace, incident)
        finally:
            await api.close()

    try:
        return _run(load)
    except UndoError as error:
        _fail(str(error))
    except ApiError as error:
        _fail(f"Kubernetes API: {error.message or error}")


def _open_undo_ledger(option: str | None, context: Any = None) -> Any:
    from tourniquet.runtime.ledger import LedgerError, open_ledger
    from tourniquet.undo import UndoError, ledger_target

    try:
        return open_ledger(ledger_target(option, os.environ, context))
    except (UndoError, LedgerError) as error:
        _fail(str(error))


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else "now (open)"


@main.command("blast-radius")
@click.argument("incident")
@click.option("--subjects", "list_subjects", is_flag=True, help="List the subjects touched (customer communication).")
@click.option("-o", "--output", type=click.Choice(["text", "csv", "json"]), default="text")
@_ledger_option
@_kube_options
def blast_radius(
    incident: str,
    list_subjects: bool,
    output: str,
    ledger: str | None,
    kubeconfig: str | None,
    kube_context: str | None,
    namespace: str | None,
) -> None:
    """What INCIDENT's agents did in its window: per tool, actions, subjects, amounts, reversible or not."""
    import csv

    from tourniquet import undo

    context = _undo_context(incident, _namespace(namespace, kubeconfig, kube_context), kubeconfig, kube_context)
    with _open_undo_ledger(ledger, context) as opened:
        if list_subjects:
            rows = undo.subjects(opened, context)
            if output == "json":
                click.echo(json.dumps(rows, indent=2))
            elif output == "csv":
                writer = csv.writer(sys.stdout, lineterminator="\n")
                writer.writerow(["subject", "actions", "tools"])
                for row in rows:
                    tools = " ".join(f"{tool}:{n}" for tool, n in sorted(row["tools"].items()))
                    writer.writerow([row["subject"], row["actions"], tools])
            else:
                for row in rows:
                    tools = ", ".join(f"{tool} {n}" for tool, n in sorted(row["tools"].items()))
                    click.echo(f"{row['subject']}\t{row['actions']}\t{tools}")
            return
        radius = undo.blast_radius(opened, context)
    if output == "json":
        body = {
            "window": {"start": _when(radius.start), "end": _when(radius.end) if radius.end else None,
                       "from": radius.window_source},
            "actions": radius.actions,
            "subjects": radius.subjects,
            "reversible": radius.reversible,
            "irreversible": radius.irreversible,
            "byTool": radius.by_tool(),
            "amounts": radius.amounts(),
            "tools": [t.to_dict() for t in radius.tools],
        }
        click.echo(json.dumps(body, indent=2))
        return
    if output == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["agent", "tool", "actions", "subjects", "compensation", "reversible", "amounts"])
        for t in radius.tools:
            amounts = " ".join(f"{total} {unit}".strip() for unit, total in t.amounts.items())
            writer.writerow([t.agent, t.tool, t.actions, t.subjects, t.compensation, t.reversible, amounts])
        return
    click.echo(f"window: {_when(radius.start)} (from {radius.window_source}) to {_when(radius.end)}")
    click.echo(radius.describe())
    for t in radius.tools:
        amounts = "; ".join(f"{total} {unit}".strip() for unit, total in t.amounts.items())
        click.echo(
            f"  {t.agent}/{t.tool}: {t.actions} actions, {t.subjects} subjects, {t.compensation}"
            + (f", {amounts}" if amounts else "")
        )


def _print_trace(action: Any, trace: Any) -> None:
    click.echo(f"action {action.idempotency_key}")
    click.echo(f"  {action.agent}/{action.tool} {action.outcome} at {_when(action.time)} (attempts {action.attempts})")
    revision = f"bundle revision {action.bundle_revision}" if action.bundle_revision is not None else "bundle"
    click.echo(f"  task {action.task_id or '-'}; {revision} {(action.bundle_hash or '-')[:16]}")
    amount = f"; amount {action.amount} {action.amount_unit or ''}".rstrip() if action.amount is not None else ""
    click.echo(f"  subjects {', '.join(action.subjects) or '-'}{amount}")
    click.echo(f"  arguments {action.args_json}")
    if action.result_summary:
        click.echo(f"  result {action.result_summary}")
    if trace is None:
        click.echo("  no decision trace (none was recorded, or its retention has passed)")
        return
    click.echo(f"  trace of task {trace.task_name or '-'}, recorded {_when(trace.recorded_at)}:")
    for part, stored in trace.parts().items():
        if "ref" in stored:
            click.echo(f"    {part}: see {stored['ref']}")
        else:
            cut = " (truncated)" if stored.get("truncated") else ""
            click.echo(f"    {part}{cut}: {json.dumps(stored.get('value'), ensure_ascii=False)}")


@main.command()
@click.argument("action_key", required=False)
@click.option("--incident", default=None, help="Every action in this incident's window instead (oldest first).")
@click.option("--limit", type=int, default=20, show_default=True, help="With --incident: at most this many.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@_ledger_option
@_kube_options
def trace(
    action_key: str | None,
    incident: str | None,
    limit: int,
    output: str,
    ledger: str | None,
    kubeconfig: str | None,
    kube_context: str | None,
    namespace: str | None,
) -> None:
    """The decision trace of ACTION_KEY (an idempotency key), or of the actions in --incident's window."""
    if bool(action_key) == bool(incident):
        _fail("give an ACTION_KEY or --incident NAME (one of them)")
    context = None
    if incident:
        context = _undo_context(incident, _namespace(namespace, kubeconfig, kube_context), kubeconfig, kube_context)
    with _open_undo_ledger(ledger, context) as opened:
        if context is not None:
            window = context.window
            actions = [a for agent in context.agents for a in opened.actions(agent, window.start, window.end)]
            actions = sorted(actions, key=lambda a: (a.time, a.idempotency_key))[:limit]
        else:
            found = opened.get(action_key)
            if found is None:
                _fail(f"no action with idempotency key {action_key!r} in the ledger")
            actions = [found]
        traced = [(a, opened.trace(a.idempotency_key)) for a in actions]
    if output == "json":
        body = [
            {
                "idempotencyKey": a.idempotency_key, "agent": a.agent, "tool": a.tool, "outcome": a.outcome,
                "time": _when(a.time), "taskId": a.task_id, "bundleRevision": a.bundle_revision,
                "bundleHash": a.bundle_hash, "subjects": list(a.subjects), "amount": a.amount,
                "amountUnit": a.amount_unit, "arguments": a.args,
                "trace": ({"taskName": t.task_name, "recordedAt": _when(t.recorded_at), **t.parts()} if t else None),
            }
            for a, t in traced
        ]
        click.echo(json.dumps(body if incident else body[0], indent=2, ensure_ascii=False))
        return
    for a, t in traced:
        _print_trace(a, t)


@main.command()
@click.argument("incident")
@click.option("--duplicates-only", is_flag=True, help="Only actions repeating an earlier one (same tool, subject).")
@click.option("--tool", "tools", multiple=True, help="Only this tool's actions (repeatable).")
@click.option("--subject", "subjects", multiple=True, help="Only actions touching this subject (repeatable).")
@click.option("--bundle-revision", "revisions", type=int, multiple=True, help="Only this revision's actions.")
@click.option("--approve", "approve_hash", default=None, metavar="PLAN_HASH", help="Approve the plan with this hash.")
@click.option("--by", "approved_by", default=None, help="Who approves (default: the kubeconfig context's user).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@_ledger_option
@_kube_options
def compensate(
    incident: str,
    duplicates_only: bool,
    tools: tuple[str, ...],
    subjects: tuple[str, ...],
    revisions: tuple[int, ...],
    approve_hash: str | None,
    approved_by: str | None,
    output: str,
    ledger: str | None,
    kubeconfig: str | None,
    kube_context: str | None,
    namespace: str | None,
) -> None:
    """Plan INCIDENT's compensation (a dry run: counts, checklist, hash); --approve PLAN_HASH approves that plan."""
    from tourniquet.domain.compensation import PlanError
    from tourniquet.runtime.compensate import gather_plan
    from tourniquet.undo import UndoError, compensation_request

    ns = _namespace(namespace, kubeconfig, kube_context)
    context = _undo_context(incident, ns, kubeconfig, kube_context)
    try:
        request = compensation_request(
            context, tools=tools, subjects=subjects, bundle_revisions=revisions, duplicates_only=duplicates_only
        )
        with _open_undo_ledger(ledger, context) as opened:
            plan, _ = gather_plan(opened, request)
    except (UndoError, PlanError) as error:
        _fail(f"{error}; nothing was planned or approved")
    summary = plan.summary()
    if not approve_hash:
        if output == "json":
            click.echo(json.dumps({"dryRun": True, **summary}, indent=2))
            return
        window = context.window
        click.echo(f"window: {_when(window.start)} (from {window.source}) to {_when(window.end)}")
        click.echo(
            f"plan {plan.hash}: {summary['actions']} actions — {summary['planned']} to reverse, "
            f"{summary['irreversible']} irreversible (mitigate by hand), {summary['skipped']} skipped"
        )
        for tool, n in summary["byTool"].items():
            click.echo(f"  {tool}: {n}")
        for entry in summary["checklist"]:
            what = "; ".join(entry.get("steps") or []) or entry.get("reason") or "nothing declared"
            click.echo(f"  checklist {entry['agent']}/{entry['tool']} ({entry['actions']}): {what}")
        click.echo(f"A dry run: nothing was executed. To approve this plan: add --approve {plan.hash}")
        return
    if approve_hash != plan.hash:
        _fail(
            f"the plan changed since it was shown: you approve {approve_hash[:16]}…, the ledger now gives "
            f"{plan.hash[:16]}… ({summary['actions']} actions, {summary['planned']} to reverse); nothing was "
            "approved: review the new plan (run without --approve) and approve its hash"
        )
    who = approved_by or _kubeconfig_user(kubeconfig, kube_context) or os.environ.get("USER") or "unknown"
    approval: dict[str, Any] = {
        "approved": True,
        "planHash": plan.hash,
        "approvedBy": who,
        "duplicatesOnly": duplicates_only,
        "tools": list(tools) or None,
        "subjects": list(subjects) or None,
        "bundleRevisions": list(revisions) or None,
    }
    _run(lambda: _patch_incident(ns, incident, {"spec": {"compensate": approval}}, kubeconfig, kube_context))
    if output == "json":
        click.echo(json.dumps({"approved": True, "approvedBy": who, **summary}, indent=2))
        return
    click.echo(f"Approved compensation plan {plan.hash} of AgentIncident {incident} (by {who}): {summary['planned']}"
               f" to reverse, {summary['irreversible']} irreversible, {summary['skipped']} skipped.")


def _kubeconfig_user(kubeconfig: str | None, kube_context: str | None) -> str | None:
    try:
        import yaml

        path = Path(kubeconfig or os.path.expanduser("~/.kube/config")).expanduser()
        config = yaml.safe_load(path.read_text()) or {}
        current = kube_context or config.get("current-context")
        for entry in config.get("contexts") or []:
            if entry.get("name") == current:
                user = (entry.get("context") or {}).get("user")
                return str(user) if user else None
    except (OSError, ValueError):
        pass
    return None


async def _patch_incident(
    namespace: str, name: str, patch: dict[str, Any], kubeconfig: str | None, kube_context: str | None
) -> None:
    from tourniquet.adapters.kube import AGENTINCIDENTS, ApiError, KubeApi

    api = await KubeApi.from_config(kubeconfig, kube_context)
    try:
        await api.patch(AGENTINCIDENTS, namespace, name, patch)
    except ApiError as error:
        _fail(f"Kubernetes API: {error.message or error}")
    finally:
        await api.close()


if __name__ == "__main__":
    main()
