"""Compensation exactly once, on PostgreSQL, with the demo refund agent and its payments table.

The agent refunds 1,000 orders honestly; then, in the incident window, it misbehaves: 8,000 new orders are
refunded and 2,000 customers who ask again are refunded again (1,500 of them for orders first refunded in the
window, 500 for orders refunded before it); after the window, 300 more orders and 200 more duplicates. The
compensation worker (``python -m tourniquet.runtime.compensate``, a subprocess) runs the ``duplicatesOnly`` plan
and is killed with SIGKILL at random points (at least five, the seed is printed), then started again, until it
finishes. Exactly the 2,000 window duplicates are reversed, once each; nothing outside the window is touched;
every order's balance is right.

``TOURNIQUET_TEST_SEED`` replays a run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.conftest import ROOT, wait_for

from refund_agent.agent import AGENT, RefundAgent, Ticket, bundle, make_orders, tickets, tool_effects
from refund_agent.payments import Payments
from tourniquet.domain.compensation import Selector
from tourniquet.runtime import CompensationRequest, Guard, StaticControl, open_ledger
from tourniquet.runtime.compensate import gather_plan

INCIDENT = "support/dup-refunds"
BATCH = 50
KILLS = 6


def run_tickets(agent: RefundAgent, batch: list[Ticket]) -> list[str]:
    """The refunds the agent made for these tickets, four at a time (four replicas of the worker)."""
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(agent.handle, batch))
    return [r.refund for r in replies if r.refund]


def worker_command(request: Path, approved: str) -> list[str]:
    return [
        sys.executable, "-m", "tourniquet.runtime.compensate", "--request", str(request), "--approve", approved,
        "--compensators", "refund_agent.compensators", "--batch-size", str(BATCH), "--concurrency", "4",
        "--lease-seconds", "1", "--lease-wait-seconds", "60", "--backoff-seconds", "0.05",
    ]


@pytest.mark.timeout(600)
def test_duplicates_only_reverses_exactly_the_window_duplicates_once_through_kills(
    postgres_url: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("TOURNIQUET_TEST_SEED") or random.randrange(1 << 30))
    print(f"seed {seed} (TOURNIQUET_TEST_SEED={seed} replays it)")
    rng = random.Random(seed)
    payments = Payments(postgres_url)
    with open_ledger(postgres_url) as ledger:
        guard = Guard(StaticControl(), ledger, agent=AGENT, tools=tool_effects(), bundle_revision=1)
        honest = RefundAgent(guard, payments, misbehave=0.0)
        careless = RefundAgent(guard, payments, misbehave=1.0)

        before = make_orders(1000, prefix="a", seed=seed)
        payments.add_orders(before)
        assert len(run_tickets(honest, list(tickets(before, prefix="t-before")))) == 1000

        start = datetime.now(UTC)
        inside = make_orders(8000, prefix="b", seed=seed)
        payments.add_orders(inside)
        assert len(run_tickets(careless, list(tickets(inside, prefix="t-first")))) == 8000
        again = rng.sample(inside, 1500) + rng.sample(before, 500)
        duplicates = set(run_tickets(careless, list(tickets([], prefix="t-again", repeat_of=again))))
        assert len(duplicates) == 2000
        end = datetime.now(UTC)

        after = make_orders(300, prefix="c", seed=seed)
        payments.add_orders(after)
        run_tickets(careless, list(tickets(after, prefix="t-after")))
        late = rng.sample(after, 100) + rng.sample(inside, 100)
        late_duplicates = set(run_tickets(careless, list(tickets([], prefix="t-late", repeat_of=late))))
        assert len(late_duplicates) == 200

        request = CompensationRequest.from_bundles(
            INCIDENT, {AGENT: bundle()}, Selector(start=start, end=end, duplicates_only=True)
        )
        plan, _ = gather_plan(ledger, request)
        assert (len(plan.items), plan.reversals) == (2000, 2000)  # 10,000 actions in the window, 2,000 duplicates
        assert ledger.blast_radius(AGENT, start, end).actions == 10_000
        request_file = tmp_path / "request.json"
        request_file.write_text(request.to_json())

        env = {**os.environ, "TOURNIQUET_LEDGER": postgres_url, "PYTHONPATH": str(ROOT / "examples")}
        command = worker_command(request_file, plan.hash)
        thresholds = sorted(rng.sample(range(1, 1950), KILLS - 1))
        kills = 0
        logs = []
        for n, threshold in enumerate([0, *thresholds]):
            log = tmp_path / f"worker-{n}.log"
            logs.append(log)
            with log.open("w") as out:
                worker = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
            if threshold == 0:
                time.sleep(rng.uniform(0.2, 1.5))  # somewhere in its start-up: imports, plan, lease, first batch
            else:
                running = worker
                wait_for(
                    lambda t=threshold, w=running: payments.reversals() >= t or w.poll() is not None,  # type: ignore[misc]
                    timeout=120,
                    interval=0.005,
                    what=f"{threshold} reversals",
                )
                time.sleep(rng.uniform(0, 0.05))
            worker.send_signal(signal.SIGKILL)
            if worker.wait(30) == -signal.SIGKILL:
                kills += 1
            assert payments.reversed_keys() <= duplicates, "a reversal outside the plan"
        assert kills >= 5, f"the worker finished before it could be killed 5 times ({kills})"

        started = time.monotonic()
        final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert final.returncode == 0, final.stdout + final.stderr
        report = json.loads(final.stdout.strip().splitlines()[-1])
        print(f"last run: {time.monotonic() - started:.1f}s, {report}")

        assert payments.reversed_keys() == duplicates
        assert (report["planned"], report["done"], report["failed"], report["pending"]) == (2000, 2000, 0, 0)
        state = ledger.compensation_state(INCIDENT)
        assert set(state) == duplicates and {r.state for r in state.values()} == {"done"}
        calls = payments.reversal_calls()
        assert 2000 <= calls <= 2000 + kills * BATCH, f"{calls} reversal calls for 2000 reversals and {kills} kills"

    net = payments.net_by_order()
    amounts = {order: amount for order, _, amount in before + inside + after}
    late_orders = {order for order, _, _ in late}
    for order, amount in amounts.items():
        assert net[order] == amount * (2 if order in late_orders else 1), order
    assert set(payments.overpaid_orders()) == late_orders  # what is left is outside the window: not ours to undo
    payments.close()
