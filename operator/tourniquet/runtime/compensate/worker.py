"""The compensation worker's loop: under the incident's lease, batch by batch, claim the actions, call the
compensator of each reversal (retried with backoff), record mitigations and skipped ones, complete the batch."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from tourniquet.runtime.compensate.request import (
    COMPENSATORS,
    DETAIL_LIMIT,
    Irreversible,
    LeaseUnavailable,
    PlanChanged,
    gather_plan,
)
from tourniquet.runtime.ledger import (
    Action,
    LedgerError,
    SqlLedger,
    worker_id,
)
from tourniquet.shared.compensation import (
    MITIGATION,
    NONE,
    REVERSAL,
    CompensationPlan,
    PlanError,
    PlanItem,
)

log = logging.getLogger(__package__)  # the package's name: tourniquet.runtime.compensate

if TYPE_CHECKING:
    from tourniquet.runtime.compensate.request import CompensationRequest, Compensator


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
