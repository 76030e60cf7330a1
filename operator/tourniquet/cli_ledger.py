"""The ledger commands: `tourniquet blast-radius`, `tourniquet trace` and `tourniquet compensate` (what an
incident's agents did, the trace of one action, and the plan that reverses them)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click

from tourniquet.cli_base import Kube, _fail, _kube_options, _kubeconfig_context, _run, main


def _ledger_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--ledger", default=None, help="The ledger's URL or SQLite file (default: TOURNIQUET_LEDGER)."
    )(fn)


def _undo_context(incident: str, kube: Kube) -> Any:
    from tourniquet.adapters.kube import ApiError
    from tourniquet.undo import UndoError, load_context

    async def load() -> Any:
        api = await kube.api()
        try:
            return await load_context(api, kube.namespace, incident)
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
    kube: Kube,
) -> None:
    """What INCIDENT's agents did in its window: per tool, actions, subjects, amounts, reversible or not."""
    import csv

    from tourniquet import undo

    context = _undo_context(incident, kube)
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
    kube: Kube,
) -> None:
    """The decision trace of ACTION_KEY (an idempotency key), or of the actions in --incident's window."""
    if bool(action_key) == bool(incident):
        _fail("give an ACTION_KEY or --incident NAME (one of them)")
    context = None
    if incident:
        context = _undo_context(incident, kube)
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
    kube: Kube,
) -> None:
    """Plan INCIDENT's compensation (a dry run: counts, checklist, hash); --approve PLAN_HASH approves that plan."""
    from tourniquet.domain.compensation import PlanError
    from tourniquet.runtime.compensate import gather_plan
    from tourniquet.undo import UndoError, compensation_request

    context = _undo_context(incident, kube)
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
    user = _kubeconfig_context(kube.kubeconfig, kube.context).get("user")
    who = approved_by or (str(user) if user else None) or os.environ.get("USER") or "unknown"
    approval: dict[str, Any] = {
        "approved": True,
        "planHash": plan.hash,
        "approvedBy": who,
        "duplicatesOnly": duplicates_only,
        "tools": list(tools) or None,
        "subjects": list(subjects) or None,
        "bundleRevisions": list(revisions) or None,
    }
    _run(lambda: _patch_incident(kube, incident, {"spec": {"compensate": approval}}))
    if output == "json":
        click.echo(json.dumps({"approved": True, "approvedBy": who, **summary}, indent=2))
        return
    click.echo(f"Approved compensation plan {plan.hash} of AgentIncident {incident} (by {who}): {summary['planned']}"
               f" to reverse, {summary['irreversible']} irreversible, {summary['skipped']} skipped.")


async def _patch_incident(kube: Kube, name: str, patch: dict[str, Any]) -> None:
    from tourniquet.adapters.kube import AGENTINCIDENTS, ApiError

    api = await kube.api()
    try:
        await api.patch(AGENTINCIDENTS, kube.namespace, name, patch)
    except ApiError as error:
        _fail(f"Kubernetes API: {error.message or error}")
    finally:
        await api.close()
