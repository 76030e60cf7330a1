"""The redeploy gate's commands of `tourniquet` (also `kubectl tourniquet`): `gate override`, `regression` and
`cases` (the regression cases every gated redeploy must pass). Importing this module (which `tourniquet.cli`
does) adds them to the main group; readiness and drills are in cli_readiness, postmortems in cli_postmortem."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import click

from tourniquet.cli_base import Kube, _agent_or_fail, _fail, _kube_options, _run, main
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
    kube: Kube,
) -> None:
    """Roll AGENT's revision out in an emergency, without (or despite) its evaluation: recorded, with a reason.

    Sets spec.evaluation.override (GitOps users commit that field instead)."""
    if not reason.strip():
        _fail("--reason is empty: say why this revision may skip its evaluation (it is recorded)")
    _run(lambda: _override(agent, kube, revision, reason.strip(), wait, timeout))


async def _override(agent: str, kube: Kube, revision: int, reason: str, wait: bool, timeout: float) -> None:
    from tourniquet.adapters.kube import AGENTDEPLOYMENTS, CONFIGMAPS, ApiError
    from tourniquet.domain import bundles, names
    from tourniquet.models import RevisionVerdict

    namespace = kube.namespace
    api = await kube.api()
    try:
        body = await _agent_or_fail(api, namespace, agent)
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
    kube: Kube,
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
    _run(lambda: _regression(incident, kube, agent, expected, name, ledger_path, sample, output, dry_run))


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
    kube: Kube,
    agent: str | None,
    expected: dict[str, Any],
    name: str | None,
    ledger_path: str | None,
    sample: int,
    output: str,
    dry_run: bool,
) -> None:
    import yaml
    from pydantic import ValidationError

    from tourniquet.adapters.kube import AGENTINCIDENTS, AGENTREGRESSIONCASES, CONFIGMAPS, ApiError
    from tourniquet.domain import regression as cases
    from tourniquet.domain.containment import write_tools
    from tourniquet.domain.errors import describe_validation_error
    from tourniquet.models import AgentDeploymentSpec
    from tourniquet.models.review import AgentRegressionCaseSpec

    namespace = kube.namespace
    api = await kube.api()
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
        also = ": a regression case gates an agent's redeploys, and this one does not exist; nothing was created"
        agent_body = await _agent_or_fail(api, namespace, agent, also)
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
def list_cases(agent: str | None, output: str, kube: Kube) -> None:
    """The regression cases (of AGENT); `-o yaml` exports them as they belong in Git (no status)."""
    _run(lambda: _list_cases(agent, kube, output))


async def _list_cases(agent: str | None, kube: Kube, output: str) -> None:
    import yaml

    from tourniquet.adapters.kube import AGENTREGRESSIONCASES, ApiError
    from tourniquet.domain.regression import export_case

    namespace = kube.namespace
    api = await kube.api()
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


def register(group: click.Group) -> None:
    for command in (gate, regression, list_cases):
        group.add_command(command)


register(main)
