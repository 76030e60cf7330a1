"""The review commands of `tourniquet` (also `kubectl tourniquet`): the redeploy gate's override, regression cases,
and, as they are built, readiness, drills and postmortems. Importing this module (which `tourniquet.cli` does)
adds them to the main group."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import click

from tourniquet.cli_base import _fail, _kube_options, _namespace, _run, main
from tourniquet.cli_incidents import _now


async def whoami(api: Any) -> str | None:
    """The user the API server sees (a SelfSubjectReview, which every authenticated user may ask for)."""
    from tourniquet.adapters.kube import SELFSUBJECTREVIEWS, ApiError

    try:
        review = await api.create(
            SELFSUBJECTREVIEWS, None, {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        )
    except ApiError:
        return None
    user = ((review.get("status") or {}).get("userInfo") or {}).get("username")
    return str(user) if user else None


# ---------------------------------------------------------------- gate


@click.group()
def gate() -> None:
    """The redeploy gate: a new bundle revision rolls out only once its evaluation Job passed."""


@gate.command()
@click.argument("agent")
@click.option("--revision", type=int, required=True, help="The bundle revision to roll out without its evaluation.")
@click.option("--reason", required=True, help="Why (kept on the revision, with who and when).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the agent runs the revision.")
@click.option("--timeout", type=float, default=60, show_default=True)
@_kube_options
def override(
    agent: str,
    revision: int,
    reason: str,
    wait: bool,
    timeout: float,
    kubeconfig: str | None,
    kube_context: str | None,
    namespace: str | None,
) -> None:
    """Roll AGENT's revision out in an emergency, without (or despite) its evaluation: recorded, with a reason.

    Sets spec.evaluation.override (GitOps users commit that field instead)."""
    if not reason.strip():
        _fail("--reason is empty: say why this revision may skip its evaluation (it is recorded)")
    ns = _namespace(namespace, kubeconfig, kube_context)
    _run(lambda: _override(agent, ns, revision, reason.strip(), wait, timeout, kubeconfig, kube_context))


async def _override(
    agent: str,
    namespace: str,
    revision: int,
    reason: str,
    wait: bool,
    timeout: float,
    kubeconfig: str | None,
    kube_context: str | None,
) -> None:
    from tourniquet.adapters.kube import AGENTDEPLOYMENTS, CONFIGMAPS, ApiError, KubeApi
    from tourniquet.domain import bundles, names
    from tourniquet.models import RevisionVerdict

    api = await KubeApi.from_config(kubeconfig, kube_context)
    try:
        body = await api.get_or_none(AGENTDEPLOYMENTS, namespace, agent)
        if body is None:
            _fail(f"AgentDeployment {agent} not found in namespace {namespace}")
            return
        if not (body.get("spec") or {}).get("evaluation"):
            _fail(f"{agent} has no spec.evaluation: nothing gates its revisions, there is nothing to override")
        cms = await api.list(CONFIGMAPS, namespace, label_selector=names.bundle_selector(agent))
        stored = {s.revision: s for s in map(bundles.stored_revision_from_configmap, cms) if s}
        kept = ", ".join(str(r) for r in sorted(stored)) or "none"
        if revision not in stored:
            _fail(f"{agent} has no bundle revision {revision} (kept: {kept}); nothing was changed")
        if stored[revision].verdict == RevisionVerdict.BAD:
            _fail(f"revision {revision} is marked bad (an incident took it out): an override does not run it")
        by = await whoami(api)
        record = {"revision": revision, "reason": reason, **({"by": by} if by else {})}
        await api.patch(AGENTDEPLOYMENTS, namespace, agent, {"spec": {"evaluation": {"override": record}}})
        click.echo(f"Overrode the evaluation of {agent} revision {revision} ({by or 'user unknown'}: {reason}).")
        if wait:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                status = (await api.get(AGENTDEPLOYMENTS, namespace, agent)).get("status") or {}
                if (status.get("bundle") or {}).get("revision") == revision:
                    click.echo(f"{agent} runs revision {revision}.")
                    return
                await asyncio.sleep(0.5)
            _fail(f"timed out after {timeout:.0f}s waiting for {agent} to run revision {revision}; see its conditions")
    except ApiError as error:
        _fail(f"Kubernetes API: {error.message or error}")
    finally:
        await api.close()


# ---------------------------------------------------------------- regression cases


def _max_calls(values: tuple[str, ...]) -> list[dict[str, Any]]:
    rules = []
    for value in values:
        target, _, count = value.partition("=")
        tool, _, argument = target.partition(":")
        if not tool or not count.strip().isdigit():
            _fail(f"--max-calls takes TOOL[:ARGUMENT]=COUNT, e.g. issue_refund:order_id=1; not {value!r}")
        rules.append({"tool": tool, **({"perArgument": argument} if argument else {}), "count": int(count)})
    return rules


@click.command()
@click.argument("incident")
@click.option("--agent", default=None, help="The agent the case is for (default: the incident's only agent).")
@click.option("--expect", required=True, help="The behaviour expected instead, in words (people edit it later).")
@click.option(
    "--max-calls",
    multiple=True,
    help="TOOL[:ARGUMENT]=COUNT: at most COUNT calls of TOOL (per value of ARGUMENT), e.g. issue_refund:order_id=1.",
)
@click.option("--forbid", multiple=True, help="A tool these inputs must never lead to (repeatable).")
@click.option("--name", default=None, help="The case's name (default: the incident's, plus the agent's if several).")
@click.option(
    "--ledger",
    "ledger_path",
    default=None,
    help="The action ledger (an SQLite file) to read the implicated actions and their decision traces from; "
    "without it the inputs come from the incident's evidence.",
)
@click.option("--sample", type=int, default=20, show_default=True, help="At most this many implicated actions.")
@click.option("-o", "--output", type=click.Choice(["name", "yaml"]), default="name", show_default=True)
@click.option("--dry-run", is_flag=True, help="Print the case; create nothing.")
@_kube_options
def regression(
    incident: str,
    agent: str | None,
    expect: str,
    max_calls: tuple[str, ...],
    forbid: tuple[str, ...],
    name: str | None,
    ledger_path: str | None,
    sample: int,
    output: str,
    dry_run: bool,
    kubeconfig: str | None,
    kube_context: str | None,
    namespace: str | None,
) -> None:
    """Record a regression case from INCIDENT: the inputs of its implicated actions and the behaviour expected.

    The case (an AgentRegressionCase) is given to the agent's evaluation Job on every redeploy the gate holds.
    `-o yaml` prints it as it belongs in Git."""
    if not expect.strip():
        _fail("--expect is empty: say what the agent should have done")
    expected: dict[str, Any] = {"description": expect.strip()}
    if max_calls:
        expected["maxCalls"] = _max_calls(max_calls)
    if forbid:
        expected["forbiddenTools"] = list(forbid)
    ns = _namespace(namespace, kubeconfig, kube_context)
    _run(
        lambda: _regression(
            incident, ns, agent, expected, name, ledger_path, sample, output, dry_run, kubeconfig, kube_context
        )
    )


def read_ledger(path: str, agent: str, start: Any, end: Any) -> list[Any]:
    """The agent's actions in the window from an SQLite ledger, with their decision traces where the ledger
    keeps them (a ledger without traces gives the actions alone)."""
    from pathlib import Path

    from tourniquet.domain.regression import ActionRecord
    from tourniquet.runtime.ledger import SqliteLedger

    if not Path(path).is_file():
        _fail(f"--ledger {path}: no such file")
    ledger = SqliteLedger(path)
    try:
        actions = ledger.actions(agent, start, end, outcomes=("ok", "error", "shadowed"))
        trace_of = getattr(ledger, "trace", None)
        records = []
        for action in actions:
            trace = trace_of(action.idempotency_key) if callable(trace_of) else None
            if trace is not None and not isinstance(trace, dict):
                trace = getattr(trace, "__dict__", None) or {"value": str(trace)}
            records.append(
                ActionRecord(
                    key=action.idempotency_key,
                    tool=action.tool,
                    arguments=action.args,
                    time=action.time,
                    task=getattr(action, "task_id", None),
                    subjects=tuple(action.subjects),
                    trace=trace,
                )
            )
        return records
    finally:
        ledger.close()


async def _regression(
    incident: str,
    namespace: str,
    agent: str | None,
    expected: dict[str, Any],
    name: str | None,
    ledger_path: str | None,
    sample: int,
    output: str,
    dry_run: bool,
    kubeconfig: str | None,
    kube_context: str | None,
) -> None:
    import yaml
    from pydantic import ValidationError

    from tourniquet.adapters.kube import (
        AGENTDEPLOYMENTS,
        AGENTINCIDENTS,
        AGENTREGRESSIONCASES,
        CONFIGMAPS,
        ApiError,
        KubeApi,
    )
    from tourniquet.domain import regression as cases
    from tourniquet.domain.containment import write_tools
    from tourniquet.domain.errors import describe_validation_error
    from tourniquet.models import AgentDeploymentSpec
    from tourniquet.models.review import AgentRegressionCaseSpec

    api = await KubeApi.from_config(kubeconfig, kube_context)
    try:
        body = await api.get_or_none(AGENTINCIDENTS, namespace, incident)
        if body is None:
            _fail(f"AgentIncident {incident} not found in namespace {namespace}")
            return
        agents = list((body.get("spec") or {}).get("agents") or [])
        if agent is None:
            if len(agents) != 1:
                _fail(f"{incident} is on {len(agents)} agents ({', '.join(agents)}): choose one with --agent")
            agent = agents[0]
        elif agent not in agents:
            _fail(f"{incident} is not on agent {agent} (its agents: {', '.join(agents)})")
        agent_body = await api.get_or_none(AGENTDEPLOYMENTS, namespace, agent)
        if agent_body is None:
            _fail(
                f"AgentDeployment {agent} not found in namespace {namespace}: a regression case gates an agent's "
                "redeploys, and this one does not exist; nothing was created"
            )
            return
        try:
            tools = write_tools(AgentDeploymentSpec.model_validate(agent_body.get("spec") or {}))
        except ValidationError:
            tools = []
        evidence_name = ((body.get("status") or {}).get("evidence") or {}).get("configMap")
        evidence = (await api.get_or_none(CONFIGMAPS, namespace, evidence_name) or {}) if evidence_name else {}
        data = evidence.get("data") or {}
        start, end = cases.incident_window(body, data, agent, _now())
        if ledger_path:
            inputs, source = cases.inputs_from_actions(read_ledger(ledger_path, agent, start, end), sample), "ledger"
            note = f"{len(inputs)} implicated action(s) from the ledger, {start:%H:%M:%S} to {end:%H:%M:%S} UTC"
        elif data:
            inputs, source = cases.inputs_from_evidence(data, tools, sample), "evidence"
            note = f"no ledger given (--ledger): {len(inputs)} input(s) from the evidence {evidence_name}'s logs"
        else:
            inputs, source = [], "manual"
            note = "no ledger given and no evidence captured: add the inputs by hand (kubectl edit)"
        revision = cases.implicated_revision(body, data, agent)
        case = cases.build_case(
            name or cases.case_name(incident, agent, len(agents)),
            namespace,
            agent=agent,
            incident=incident,
            revision=revision,
            source=source,
            inputs=inputs,
            expected=expected,
        )
        try:
            AgentRegressionCaseSpec.model_validate(case["spec"])
        except ValidationError as error:
            _fail(describe_validation_error(error))
        if dry_run:
            click.echo(yaml.safe_dump(cases.export_case(case), sort_keys=False), nl=False)
            return
        try:
            created = await api.create(AGENTREGRESSIONCASES, namespace, case)
        except ApiError as error:
            if error.already_exists:
                _fail(
                    f"AgentRegressionCase {case['metadata']['name']} already exists in namespace {namespace}: "
                    f"edit it (kubectl edit arc {case['metadata']['name']}) or choose another --name"
                )
            raise
        if output == "yaml":
            click.echo(yaml.safe_dump(cases.export_case(created), sort_keys=False), nl=False)
        else:
            click.echo(f"Recorded AgentRegressionCase {created['metadata']['name']} for {agent} ({note}).")
    except ApiError as error:
        _fail(f"Kubernetes API: {error.message or error}")
    finally:
        await api.close()


@click.command("cases")
@click.argument("agent", required=False)
@click.option("-o", "--output", type=click.Choice(["text", "yaml"]), default="text", show_default=True)
@_kube_options
def list_cases(
    agent: str | None, output: str, kubeconfig: str | None, kube_context: str | None, namespace: str | None
) -> None:
    """The regression cases (of AGENT); `-o yaml` exports them as they belong in Git (no status)."""
    ns = _namespace(namespace, kubeconfig, kube_context)
    _run(lambda: _list_cases(agent, ns, output, kubeconfig, kube_context))


async def _list_cases(
    agent: str | None, namespace: str, output: str, kubeconfig: str | None, kube_context: str | None
) -> None:
    import yaml

    from tourniquet.adapters.kube import AGENTREGRESSIONCASES, ApiError, KubeApi
    from tourniquet.domain.regression import export_case

    api = await KubeApi.from_config(kubeconfig, kube_context)
    try:
        found = await api.list(AGENTREGRESSIONCASES, namespace)
    except ApiError as error:
        _fail(f"Kubernetes API: {error.message or error}")
        return
    finally:
        await api.close()
    found = sorted(
        (c for c in found if agent is None or (c.get("spec") or {}).get("agent") == agent),
        key=lambda c: c["metadata"]["name"],
    )
    if output == "yaml":
        click.echo(yaml.safe_dump_all([export_case(c) for c in found], sort_keys=False), nl=False)
        return
    if not found:
        click.echo(f"No regression cases{f' for {agent}' if agent else ''} in namespace {namespace}.")
        return
    for case in found:
        spec = case.get("spec") or {}
        conditions = (case.get("status") or {}).get("conditions") or []
        accepted: dict[str, Any] = next((c for c in conditions if c["type"] == "Accepted"), {})
        flag = "" if accepted.get("status", "True") == "True" else f"  [{accepted.get('reason')}]"
        click.echo(
            f"{case['metadata']['name']}  agent {spec.get('agent')}  from {spec.get('incident') or '-'}  "
            f"{len(spec.get('inputs') or [])} input(s): {(spec.get('expected') or {}).get('description', '')}{flag}"
        )


# ---------------------------------------------------------------- readiness


@click.command()
@click.argument("agent", required=False)
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--strict", is_flag=True, help="Exit 1 unless every agent shown is 5/5 (for CI).")
@_kube_options
def readiness(
    agent: str | None,
    output: str,
    strict: bool,
    kubeconfig: str | None,
    kube_context: str | None,
    namespace: str | None,
) -> None:
    """The readiness checklist of AGENT (or of every agent): what is missing, and how to fix it."""
    ns = _namespace(namespace, kubeconfig, kube_context)
    _run(lambda: _readiness(agent, ns, output, strict, kubeconfig, kube_context))


async def _readiness(
    agent: str | None, namespace: str, output: str, strict: bool, kubeconfig: str | None, kube_context: str | None
) -> None:
    import json

    from tourniquet.adapters.kube import AGENTDEPLOYMENTS, ApiError, KubeApi

    api = await KubeApi.from_config(kubeconfig, kube_context)
    try:
        if agent:
            found = await api.get_or_none(AGENTDEPLOYMENTS, namespace, agent)
            if found is None:
                _fail(f"AgentDeployment {agent} not found in namespace {namespace}")
            agents = [found] if found else []
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
    kubeconfig: str | None,
    kube_context: str | None,
    namespace: str | None,
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
    ns = _namespace(namespace, kubeconfig, kube_context)
    metadata = {"name": name} if name else {"generateName": f"{agent[:50]}-drill-"}
    body = {"apiVersion": "tourniquet.dev/v1alpha1", "kind": "AgentDrill", "metadata": metadata, "spec": spec}
    _run(lambda: _drill(body, ns, wait, timeout, kubeconfig, kube_context))


async def _drill(
    body: dict[str, Any], namespace: str, wait: bool, timeout: float, kubeconfig: str | None, kube_context: str | None
) -> None:
    from tourniquet.adapters.kube import AGENTDEPLOYMENTS, AGENTDRILLS, ApiError, KubeApi

    agent = body["spec"]["agent"]
    api = await KubeApi.from_config(kubeconfig, kube_context)
    try:
        if await api.get_or_none(AGENTDEPLOYMENTS, namespace, agent) is None:
            _fail(f"AgentDeployment {agent} not found in namespace {namespace}; nothing was created")
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


# ---------------------------------------------------------------- postmortems


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
    kubeconfig: str | None,
    kube_context: str | None,
    namespace: str | None,
) -> None:
    """Print INCIDENT's postmortem (the ConfigMap <incident>-postmortem): summary, timeline, levers, blast radius,
    the implicated revision's diff, decision traces, review questions. For an open incident the operator writes a
    draft on demand (this command asks for it and waits); a resolved incident's is written when it resolves."""
    ns = _namespace(namespace, kubeconfig, kube_context)
    _run(lambda: _postmortem(incident, ns, output, refresh, timeout, kubeconfig, kube_context))


async def _postmortem(
    incident: str,
    namespace: str,
    output: str,
    refresh: bool,
    timeout: float,
    kubeconfig: str | None,
    kube_context: str | None,
) -> None:
    from tourniquet.adapters.kube import AGENTINCIDENTS, CONFIGMAPS, ApiError, KubeApi
    from tourniquet.domain import postmortem as pm
    from tourniquet.domain.incident import micro_time

    api = await KubeApi.from_config(kubeconfig, kube_context)
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
    for command in (gate, regression, list_cases, readiness, drill, postmortem):
        group.add_command(command)


register(main)
