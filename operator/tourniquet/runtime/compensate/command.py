"""``python -m tourniquet.runtime.compensate``: the options and the environment, the request, the exit code."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tourniquet.runtime.compensate.request import (
    CompensationRequest,
    ExitCode,
    LeaseUnavailable,
    PlanChanged,
    gather_plan,
)
from tourniquet.runtime.compensate.worker import CompensationWorker
from tourniquet.runtime.ledger import (
    LedgerError,
    LedgerUnavailable,
    ledger_target_from_env,
    open_ledger,
    redacted_url,
)
from tourniquet.shared.compensation import (
    PlanError,
    Selector,
)


def _build_request(args: argparse.Namespace, environ: Mapping[str, str]) -> CompensationRequest:
    incident = args.incident or environ.get("TOURNIQUET_INCIDENT", "")
    raw = args.request
    if raw is None and environ.get("TOURNIQUET_COMPENSATION_REQUEST"):
        raw = environ["TOURNIQUET_COMPENSATION_REQUEST"]
    if raw is not None:
        text = sys.stdin.read() if raw == "-" else (raw if raw.lstrip().startswith("{") else Path(raw).read_text())
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise PlanError(f"the compensation request is not JSON: {exc}") from None
        if incident:
            data["incident"] = incident
        return CompensationRequest.from_dict(data)
    if not (args.bundle and args.agent and args.start):
        raise PlanError("give --request (or TOURNIQUET_COMPENSATION_REQUEST), or --bundle, --agent and --start")
    if not incident:
        raise PlanError("give --incident (or TOURNIQUET_INCIDENT): the incident the compensations are claimed for")
    selector = Selector(
        start=args.start,
        end=args.end,
        tools=tuple(args.tool) if args.tool else None,
        subjects=tuple(args.subject) if args.subject else None,
        bundle_revisions=tuple(args.bundle_revision) if args.bundle_revision else None,
        duplicates_only=args.duplicates_only,
    )
    bundle = json.loads(Path(args.bundle).read_text())
    return CompensationRequest.from_bundles(incident, {args.agent: bundle}, selector)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tourniquet.runtime.compensate",
        description="Compensate an incident's actions exactly once (a dry run unless --approve names the plan).",
    )
    parser.add_argument("--incident", help="namespace/name of the incident (TOURNIQUET_INCIDENT)")
    parser.add_argument("--ledger", help="ledger path or URL (TOURNIQUET_LEDGER, TOURNIQUET_LEDGER_URL_FILE)")
    parser.add_argument("--request", help="the request: a JSON file, JSON text, or - for stdin")
    parser.add_argument("--bundle", help="instead of --request: the agent's bundle.json …")
    parser.add_argument("--agent", help="… the agent's name …")
    parser.add_argument("--start", help="… the window's start (RFC 3339) …")
    parser.add_argument("--end", help="… its end …")
    parser.add_argument("--tool", action="append", help="… only these tools (repeat) …")
    parser.add_argument("--subject", action="append", help="… only actions touching these subjects (repeat) …")
    parser.add_argument("--bundle-revision", type=int, action="append", help="… only these bundle revisions …")
    parser.add_argument("--duplicates-only", action="store_true", help="… only duplicates of earlier actions")
    parser.add_argument("--approve", help="execute the plan with this hash (TOURNIQUET_COMPENSATION_PLAN_HASH)")
    parser.add_argument("--compensators", help="modules registering compensators, comma-separated")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--attempts", type=int, default=3)
    parser.add_argument("--backoff-seconds", type=float, default=0.5)
    parser.add_argument("--lease-seconds", type=float, default=30.0)
    parser.add_argument("--lease-wait-seconds", type=float, default=None)
    return parser


def import_compensators(modules: str | None) -> None:
    for name in [m.strip() for m in (modules or "").split(",") if m.strip()]:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise PlanError(f"cannot import the compensator module {name}: {exc}") from exc


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def report(payload: dict[str, Any]) -> None:
        print(json.dumps(payload, sort_keys=True), flush=True)

    try:
        request = _build_request(args, env)
        import_compensators(args.compensators or env.get("TOURNIQUET_COMPENSATORS"))
        target = args.ledger or ledger_target_from_env(env)
    except (PlanError, LedgerError, OSError, ValueError) as exc:
        report({"error": str(exc), "executed": False})
        return ExitCode.INVALID
    approved = args.approve or env.get("TOURNIQUET_COMPENSATION_PLAN_HASH") or ""
    try:
        with open_ledger(target) as ledger:
            if not approved:
                plan, _ = gather_plan(ledger, request)
                report({"incident": request.incident, "dryRun": True, "plan": plan.summary()})
                return ExitCode.OK
            worker = CompensationWorker(
                ledger,
                request,
                approved_hash=approved,
                batch_size=args.batch_size,
                concurrency=args.concurrency,
                attempts=args.attempts,
                backoff=args.backoff_seconds,
                lease_seconds=args.lease_seconds,
                lease_wait_seconds=args.lease_wait_seconds,
            )
            plan, outcome = worker.run()
    except PlanChanged as exc:
        report({"incident": request.incident, "error": str(exc), "executed": False})
        return ExitCode.PLAN_CHANGED
    except PlanError as exc:
        report({"incident": request.incident, "error": str(exc), "executed": False})
        return ExitCode.INVALID
    except LeaseUnavailable as exc:
        report({"incident": request.incident, "error": str(exc)})
        return ExitCode.LEASE
    except LedgerUnavailable as exc:
        report({"incident": request.incident, "error": str(exc), "ledger": redacted_url(str(target))})
        return ExitCode.LEDGER_UNAVAILABLE
    report({"incident": request.incident, "hash": plan.hash, **outcome.to_dict()})
    return ExitCode.FAILED if outcome.failed else ExitCode.OK
