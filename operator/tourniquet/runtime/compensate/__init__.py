"""The compensation worker: undo an incident's actions, each exactly once, with the agent's own compensators.

The agent registers, next to its tools, how to undo each write tool's action; the worker calls that
function with the *original* action (its ``idempotency_key``, ``args``, ``subjects``, ``amount``)::

    from tourniquet.runtime import Irreversible, compensator

    @compensator("issue_refund")                       # the tool whose actions this undoes
    def reverse_refund(action):
        if payments.settled(action.args["order_id"]):
            raise Irreversible("the refund has settled; a chargeback is needed")
        payments.reverse(action.args["order_id"], idempotency_key=action.idempotency_key)

Run it as ``python -m tourniquet.runtime.compensate`` (the operator runs it as a Job built from the
agent's pod template, so it has the agent's image, environment and secrets)::

    python -m tourniquet.runtime.compensate --incident support/dup-refunds --request request.json \\
        --compensators refund_agent.compensators                         # a dry run: prints the plan
    python -m tourniquet.runtime.compensate ... --approve 3f9a0c…         # executes that plan, and only it

The request (``--request``, or ``--bundle``/``--agent`` and the selector options) says which actions
(:mod:`tourniquet.domain.compensation`: window, tools, subjects, bundle revisions, ``duplicatesOnly``) and
how each tool is compensated (the bundle's declarations). The worker reads the plan from the ledger and
executes it only when its hash is the approved one. Then, under the incident's lease in the ledger (one
worker per incident; renewed every third of ``--lease-seconds`` and before each batch, and no call is made
once it could have expired), batch by batch: it claims the actions
(``claim_batch``), calls the compensator of each reversal (``--concurrency`` at a time, each retried
``--attempts`` times with exponential backoff), records mitigations as ``irreversible`` (the steps are
the human's checklist) and ``none`` as ``skipped``, and completes the batch in the ledger.

Exactly once: an action compensated (or found irreversible, or skipped) is never claimed again for the
incident. A worker killed at any point leaves at most its current batch claimed and not completed; the
next worker takes the lease once it expires and takes those claims over. Their compensating calls may
have happened already, so a compensator must be idempotent on the action's key (as a payment API is on
an idempotency key): that is why it gets the original key. Nothing outside the plan is touched, and a
plan that changed since approval executes nothing.

Environment (the options override): ``TOURNIQUET_INCIDENT``, ``TOURNIQUET_LEDGER`` or
``TOURNIQUET_LEDGER_URL_FILE``, ``TOURNIQUET_COMPENSATION_REQUEST`` (the request's JSON),
``TOURNIQUET_COMPENSATION_PLAN_HASH`` (the approved hash), ``TOURNIQUET_COMPENSATORS`` (modules to
import, comma-separated). Exit codes: 0 every action compensated, irreversible or skipped; 1 some failed
(a later run retries them); 2 invalid input (nothing executed); 3 the plan changed since approval
(nothing executed); 4 the ledger is unavailable; 5 the lease is held by another worker or was lost.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from tourniquet.domain.compensation import (
    MITIGATION,
    NONE,
    REVERSAL,
    CompensationPlan,
    Declaration,
    PlanError,
    PlanItem,
    Selector,
    declarations_from_bundle,
    plan_compensation,
)
from tourniquet.runtime.ledger import (
    Action,
    LedgerError,
    LedgerUnavailable,
    SqlLedger,
    ledger_target_from_env,
    open_ledger,
    redacted_url,
    worker_id,
)

log = logging.getLogger(__name__)

Compensator = Callable[[Action], Any]
F = TypeVar("F", bound=Compensator)
DETAIL_LIMIT = 1000

# tool -> the function that undoes its actions; filled by @compensator at import of the agent's modules.
COMPENSATORS: dict[str, Compensator] = {}


class Irreversible(Exception):
    """Raised by a compensator: this action cannot be undone after all; recorded ``irreversible``."""


def compensator(tool: str, registry: dict[str, Compensator] | None = None) -> Callable[[F], F]:
    """Register the function that undoes ``tool``'s actions: it gets the original :class:`Action`."""

    def register(fn: F) -> F:
        target = COMPENSATORS if registry is None else registry
        if tool in target and target[tool] is not fn:
            raise ValueError(f"a compensator for {tool} is already registered ({target[tool].__qualname__})")
        target[tool] = fn
        return fn

    return register


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1
    INVALID = 2
    PLAN_CHANGED = 3
    LEDGER_UNAVAILABLE = 4
    LEASE = 5


class PlanChanged(PlanError):
    """The plan read from the ledger is not the approved one; nothing was executed."""


class LeaseUnavailable(LedgerError):
    """Another worker holds the incident's lease, or this one lost it."""


@dataclass(frozen=True)
class CompensationRequest:
    """What to compensate (the selector) and how (each agent's declarations): the plan's input."""

    incident: str
    selector: Selector
    declarations: dict[str, dict[str, Declaration]]
    all_tools: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "incident": self.incident,
            "selector": self.selector.to_dict(),
            "agents": {
                agent: {
                    "tools": sorted(self.all_tools.get(agent, decls)),
                    "compensation": {tool: decl.to_dict() for tool, decl in sorted(decls.items())},
                }
                for agent, decls in sorted(self.declarations.items())
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompensationRequest:
        try:
            agents = data["agents"]
            declarations = {
                agent: {tool: Declaration.from_dict(d) for tool, d in (spec.get("compensation") or {}).items()}
                for agent, spec in agents.items()
            }
            all_tools = {agent: list(spec.get("tools") or ()) for agent, spec in agents.items()}
            return cls(
                incident=str(data["incident"]),
                selector=Selector.from_dict(data["selector"]),
                declarations=declarations,
                all_tools=all_tools,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise PlanError(
                f"a compensation request needs incident, selector and agents.<name>.compensation; {exc!r}"
            ) from exc

    @classmethod
    def from_bundles(cls, incident: str, bundles: Mapping[str, Any], selector: Selector) -> CompensationRequest:
        """From each agent's bundle (a :class:`~tourniquet.models.Bundle`, or its JSON as mounted)."""
        from tourniquet.models import Bundle

        declarations: dict[str, dict[str, Declaration]] = {}
        all_tools: dict[str, list[str]] = {}
        for agent, raw in bundles.items():
            bundle = raw if isinstance(raw, Bundle) else Bundle.model_validate(raw)
            declarations[agent] = declarations_from_bundle(bundle)
            all_tools[agent] = [t.name for t in bundle.tools]
        return cls(incident=incident, selector=selector, declarations=declarations, all_tools=all_tools)


def gather_plan(ledger: SqlLedger, request: CompensationRequest) -> tuple[CompensationPlan, dict[str, Action]]:
    """Read the window's actions from the ledger and plan (pure) over them; the actions by key."""
    selector = request.selector
    actions: list[Action] = []
    earlier: set[tuple[str, str, str]] = set()
    for agent in sorted(request.declarations):
        tools = sorted(request.declarations[agent])
        actions += ledger.actions(agent, selector.start, selector.end, tools=tools)
        if selector.duplicates_only:
            earlier |= {
                (agent, tool, subject)
                for tool, subject in ledger.earlier_primary_subjects(agent, selector.start, selector.end, tools=tools)
            }
    plan = plan_compensation(selector, actions, request.declarations, earlier=earlier, all_tools=request.all_tools)
    return plan, {a.idempotency_key: a for a in actions}


@dataclass
class Outcome:
    """How the compensations of a plan stand in the ledger (this run's and earlier runs')."""

    planned: int = 0
    done: int = 0
    failed: int = 0
    irreversible: int = 0
    skipped: int = 0
    pending: int = 0
    calls: int = 0  # compensator calls this run made (retries included)
    reclaimed: int = 0  # claims this run took again: a failure retried, or left behind by a worker that died
    failures: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "planned": self.planned,
            "done": self.done,
            "failed": self.failed,
            "irreversible": self.irreversible,
            "skipped": self.skipped,
            "pending": self.pending,
            "calls": self.calls,
            "reclaimed": self.reclaimed,
        }
        if self.failures:
            out["failures"] = dict(list(self.failures.items())[:20])
        return out


def plan_outcome(ledger: SqlLedger, incident: str, plan: CompensationPlan) -> Outcome:
    state = ledger.compensation_state(incident)
    outcome = Outcome(planned=len(plan.items))
    for item in plan.items:
        record = state.get(item.idempotency_key)
        current = record.state if record is not None else "pending"
        if current == "claimed":
            current = "pending"
        setattr(outcome, current, getattr(outcome, current) + 1)
        if current == "failed" and record is not None and record.detail:
            outcome.failures[item.idempotency_key] = record.detail
    return outcome


def _detail(text: str) -> str:
    return text if len(text) <= DETAIL_LIMIT else text[: DETAIL_LIMIT - 1] + "…"


class _Lease:
    """Holds the incident's lease in the ledger, renewing it from a thread until released."""

    def __init__(self, ledger: SqlLedger, incident: str, holder: str, ttl: float) -> None:
        self.ledger = ledger
        self.incident = incident
        self.holder = holder
        self.ttl = ttl
        self.valid_until = 0.0
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, wait: float, sleep: Callable[[float], None]) -> None:
        deadline = time.monotonic() + wait
        while True:
            started = time.monotonic()
            if self.ledger.acquire_lease(self.incident, self.holder, timedelta(seconds=self.ttl)):
                self.valid_until = started + self.ttl
                break
            if time.monotonic() >= deadline:
                current = self.ledger.lease_holder(self.incident)
                raise LeaseUnavailable(
                    f"another worker ({current[0] if current else 'unknown'}) holds the compensation lease of "
                    f"incident {self.incident} (until {current[1].isoformat() if current else '?'}); "
                    "it may still be running: wait for it, or for its lease to expire"
                )
            log.info("Waiting for the compensation lease of %s (held by another worker)", self.incident)
            sleep(min(max(self.ttl / 5, 0.1), max(deadline - time.monotonic(), 0.05)))
        self._thread = threading.Thread(target=self._renew, name="tourniquet-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        interval = self.ttl / 3
        while not self._stop.wait(interval):
            started = time.monotonic()
            try:
                if self.ledger.renew_lease(self.incident, self.holder, timedelta(seconds=self.ttl)):
                    self.valid_until = started + self.ttl
                    continue
                self.lost = "the lease expired and another worker took it"
            except Exception as exc:  # a renewal that fails is retried until the lease would expire
                if time.monotonic() < self.valid_until - interval:
                    log.warning("Could not renew the compensation lease of %s: %s", self.incident, exc)
                    continue
                self.lost = f"the lease could not be renewed: {exc}"
            log.error("Lost the compensation lease of %s: %s", self.incident, self.lost)
            return

    def confirm(self) -> None:
        """Renew the lease now and raise unless it is still ours (before each batch: one short write)."""
        started = time.monotonic()
        if self.lost is None:
            if self.ledger.renew_lease(self.incident, self.holder, timedelta(seconds=self.ttl)):
                self.valid_until = max(self.valid_until, started + self.ttl)
            else:
                self.lost = "the lease expired and another worker took it"
        self.check()

    def check(self) -> None:
        """Raise unless the lease is still ours, with a third of its time to spare."""
        if self.lost is None and time.monotonic() > self.valid_until - self.ttl / 3:
            self.lost = "the lease was not renewed in time"
        if self.lost is not None:
            raise LeaseUnavailable(f"stopped compensating incident {self.incident}: {self.lost}")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl)
        if self.lost is None:
            try:
                self.ledger.release_lease(self.incident, self.holder)
            except LedgerError as exc:
                log.warning(
                    "Could not release the compensation lease of %s (it expires by itself): %s", self.incident, exc
                )


class CompensationWorker:
    """Executes one approved plan (see the module docstring)."""

    def __init__(
        self,
        ledger: SqlLedger,
        request: CompensationRequest,
        *,
        approved_hash: str,
        compensators: Mapping[str, Compensator] | None = None,
        batch_size: int = 100,
        concurrency: int = 4,
        attempts: int = 3,
        backoff: float = 0.5,
        lease_seconds: float = 30.0,
        lease_wait_seconds: float | None = None,
        worker: str | None = None,
        on_progress: Callable[[Outcome], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 1 <= batch_size <= 500:
            raise ValueError(f"batch size must be 1 to 500, not {batch_size}")
        if concurrency < 1 or attempts < 1:
            raise ValueError("concurrency and attempts must be at least 1")
        self.ledger = ledger
        self.request = request
        self.incident = request.incident
        self.approved_hash = approved_hash
        self.compensators = dict(COMPENSATORS if compensators is None else compensators)
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.attempts = attempts
        self.backoff = backoff
        self.lease_seconds = lease_seconds
        self.lease_wait_seconds = 2 * lease_seconds if lease_wait_seconds is None else lease_wait_seconds
        self.worker = worker or worker_id()
        self.on_progress = on_progress
        self.sleep = sleep
        self.calls = 0
        self._calls_lock = threading.Lock()

    def check(self, plan: CompensationPlan) -> None:
        """Refuse, before anything runs, a plan that is not the approved one or that no compensator can run."""
        if plan.hash != self.approved_hash:
            raise PlanChanged(
                f"the plan changed since it was approved: approved {self.approved_hash[:16]}…, the ledger now gives "
                f"{plan.hash[:16]}… ({plan.counts()['actions']} actions, {plan.reversals} to reverse); "
                "nothing was executed: review the new plan and approve its hash"
            )
        missing = sorted({i.tool for i in plan.items if i.type == REVERSAL} - set(self.compensators))
        if missing:
            raise PlanError(
                f"no compensator is registered for {', '.join(missing)}: register one with "
                f"@compensator({missing[0]!r}) in a module named by TOURNIQUET_COMPENSATORS (or --compensators); "
                f"registered: {', '.join(sorted(self.compensators)) or 'none'}; nothing was executed"
            )

    def run(self) -> tuple[CompensationPlan, Outcome]:
        plan, actions = gather_plan(self.ledger, self.request)
        self.check(plan)
        lease = _Lease(self.ledger, self.incident, self.worker, self.lease_seconds)
        lease.acquire(self.lease_wait_seconds, self.sleep)
        reclaimed = 0
        try:
            log.info(
                "Compensating incident %s: plan %s, %d actions (%d to reverse, %d irreversible, %d skipped)",
                self.incident,
                plan.hash[:16],
                len(plan.items),
                plan.reversals,
                plan.irreversible,
                plan.skipped,
            )
            with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="compensate") as pool:
                for start in range(0, len(plan.items), self.batch_size):
                    lease.confirm()
                    batch = plan.items[start : start + self.batch_size]
                    claims = self.ledger.claim_batch(self.incident, [i.idempotency_key for i in batch], self.worker)
                    held = [i for i in batch if i.idempotency_key in claims]
                    if not held:
                        continue
                    reclaimed += sum(1 for attempts in claims.values() if attempts > 1)
                    results = list(pool.map(lambda item: self._compensate(item, actions, lease), held))
                    self.ledger.complete_batch(self.incident, self.worker, results)
                    if self.on_progress is not None:
                        self.on_progress(plan_outcome(self.ledger, self.incident, plan))
                    done = start + len(batch)
                    log.info("Compensated %d of %d actions of incident %s", done, len(plan.items), self.incident)
        finally:
            lease.release()
        outcome = plan_outcome(self.ledger, self.incident, plan)
        outcome.calls = self.calls
        outcome.reclaimed = reclaimed
        return plan, outcome

    def _compensate(self, item: PlanItem, actions: Mapping[str, Action], lease: _Lease) -> tuple[str, str, str | None]:
        decl = self.request.declarations.get(item.agent, {}).get(item.tool)
        if item.type == MITIGATION:
            steps = "; ".join(decl.steps) if decl is not None and decl.steps else "see the tool's declaration"
            return item.idempotency_key, "irreversible", _detail(f"mitigate by hand: {steps}")
        if item.type == NONE:
            return item.idempotency_key, "skipped", _detail((decl.reason if decl else None) or "no compensation")
        fn = self.compensators[item.tool]
        action = actions[item.idempotency_key]
        error: BaseException | None = None
        for attempt in range(self.attempts):
            lease.check()
            with self._calls_lock:
                self.calls += 1
            try:
                fn(action)
                return item.idempotency_key, "done", None
            except Irreversible as exc:
                return item.idempotency_key, "irreversible", _detail(str(exc) or "the compensator says irreversible")
            except Exception as exc:
                error = exc
                log.warning(
                    "Compensating %s (%s) failed, attempt %d of %d: %s: %s",
                    item.idempotency_key,
                    item.tool,
                    attempt + 1,
                    self.attempts,
                    type(exc).__name__,
                    exc,
                )
                if attempt + 1 < self.attempts:
                    self.sleep(self.backoff * 2**attempt)
        assert error is not None
        return item.idempotency_key, "failed", _detail(f"{type(error).__name__}: {error}")


# -- the command ---------------------------------------------------------------------------------------


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

