"""Benchmark: the shared action ledger on PostgreSQL.

1. Blast radius over a large ledger: `--rows` actions (1,000,000 by default) of `--agents` agents over 30 days,
   each with two subjects (its order first, then its customer) and, for refunds, an amount, loaded with COPY
   into a durable server (fsync on), then VACUUM ANALYZE. Then `SqlLedger.blast_radius` (per tool: actions,
   distinct subjects, amounts; distinct subjects over every tool) for windows of 1 hour, 1 day, 7 days and
   the whole 30 days of the busiest agent: the median of 5 runs each, and the rows in the window.
2. 10,000 compensations (`--compensations`): that many refunds in a window on the same server, each made
   through the demo agent's fake payments table; the compensation worker (in this process, `--concurrency`
   threads) reverses them all; the time from start to the last one recorded done.

The server is Debian's PostgreSQL started in a temporary directory (tourniquet.sandbox.postgres) and removed
afterwards. Figures only: nothing here asserts.

    python bench/bench_ledger.py [--rows 1000000] [--agents 10] [--compensations 10000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "examples"))

import psycopg  # noqa: E402

from refund_agent.agent import AGENT, bundle  # noqa: E402
from refund_agent.payments import Payments  # noqa: E402
from tourniquet.domain.compensation import Selector  # noqa: E402
from tourniquet.runtime import CompensationRequest, CompensationWorker  # noqa: E402
from tourniquet.runtime.compensate import COMPENSATORS, gather_plan  # noqa: E402
from tourniquet.runtime.ledger import args_digest, canonical_json  # noqa: E402
from tourniquet.runtime.postgres import PostgresLedger  # noqa: E402
from tourniquet.sandbox.postgres import PostgresServer  # noqa: E402

END = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
DAYS = 30
TOOLS = (("issue_refund", 0.7), ("send_email", 0.2), ("close_ticket", 0.1))


def load(url: str, rows: int, agents: int, seed: int) -> None:
    """`rows` actions straight into the ledger's tables with COPY (the shape `record` writes)."""
    rng = random.Random(seed)
    start = END - timedelta(days=DAYS)
    span = DAYS * 86400
    names = [f"agent-{i}" for i in range(agents)]
    weights = [2.0 if i == 0 else 1.0 for i in range(agents)]  # agent-0 is the busiest
    tools = [t for t, _ in TOOLS]
    tool_weights = [w for _, w in TOOLS]
    action_columns = (
        "idempotency_key, agent, tool, args_digest, args_json, action_time, outcome, result_summary, attempts, "
        "task_id, bundle_revision, bundle_hash, amount, amount_unit"
    )
    subject_columns = "idempotency_key, position, subject, agent, tool, action_time, outcome"
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY tourniquet_actions ({action_columns}) FROM STDIN") as copy:
            for i in range(rows):
                agent = rng.choices(names, weights)[0]
                tool = rng.choices(tools, tool_weights)[0]
                when = start + timedelta(seconds=rng.random() * span)
                order = rng.randrange(rows // 2)
                amount = rng.randrange(500, 20000) if tool == "issue_refund" else None
                args = canonical_json({"order_id": order})
                copy.write_row(
                    (f"k{i}", agent, tool, args_digest(tool, {"order_id": order}), args, when,
                     "ok" if rng.random() > 0.02 else "error", None, 1, f"t{i}", 1, None, amount,
                     "USD cents" if amount is not None else None)
                )
        rng = random.Random(seed)  # the same draws again, for the subjects
        with conn.cursor() as cur, cur.copy(f"COPY tourniquet_action_subjects ({subject_columns}) FROM STDIN") as copy:
            for i in range(rows):
                agent = rng.choices(names, weights)[0]
                tool = rng.choices(tools, tool_weights)[0]
                when = start + timedelta(seconds=rng.random() * span)
                order = rng.randrange(rows // 2)
                if tool == "issue_refund":
                    rng.randrange(500, 20000)
                outcome = "ok" if rng.random() > 0.02 else "error"
                copy.write_row((f"k{i}", 0, f"order:{order}", agent, tool, when, outcome))
                copy.write_row((f"k{i}", 1, f"customer:{order // 3}", agent, tool, when, outcome))
        conn.execute("VACUUM ANALYZE tourniquet_actions")
        conn.execute("VACUUM ANALYZE tourniquet_action_subjects")


def bench_blast_radius(ledger: PostgresLedger) -> None:
    print("blast radius of agent-0 (median of 5):")
    print(f"  {'window':>8}  {'actions':>8}  {'subjects':>8}  {'time':>9}")
    for label, width in (("1 hour", timedelta(hours=1)), ("1 day", timedelta(days=1)),
                         ("7 days", timedelta(days=7)), ("30 days", timedelta(days=DAYS))):
        times = []
        for _ in range(5):
            began = time.perf_counter()
            radius = ledger.blast_radius("agent-0", END - width, END)
            times.append(time.perf_counter() - began)
        print(f"  {label:>8}  {radius.actions:>8}  {radius.subjects:>8}  {statistics.median(times) * 1000:>7.1f}ms")


def bench_compensations(server: PostgresServer, count: int, concurrency: int) -> None:
    url = server.create_database("compensations")
    payments = Payments(url)
    with PostgresLedger(url, max_size=concurrency + 2) as ledger:
        from tourniquet.runtime import Action

        start = datetime.now(UTC)
        payments.add_orders((f"o{i}", f"c{i % 997}", 1000 + i) for i in range(count))
        for i in range(count):
            key = f"refund-{i}"
            payments.refund(f"o{i}", 1000 + i, idempotency_key=key)
            args = {"order_id": f"o{i}", "customer": f"c{i % 997}", "amount_cents": 1000 + i}
            ledger.record(
                Action(key, AGENT, "issue_refund", args_digest("issue_refund", args), canonical_json(args),
                       subjects=(f"order:o{i}", f"customer:c{i % 997}"), amount=1000 + i, amount_unit="USD cents")
            )
        request = CompensationRequest.from_bundles(
            "bench/refunds", {AGENT: bundle()}, Selector(start=start, end=datetime.now(UTC))
        )
        plan, _ = gather_plan(ledger, request)
        import refund_agent.compensators  # noqa: F401  (registers issue_refund's compensator)

        began = time.perf_counter()
        _, outcome = CompensationWorker(
            ledger, request, approved_hash=plan.hash, compensators=COMPENSATORS, concurrency=concurrency
        ).run()
        elapsed = time.perf_counter() - began
    print(
        f"{count} compensations (durable server, {concurrency} at a time): {elapsed:.1f}s, "
        f"{count / elapsed:.0f}/s; done {outcome.done}, failed {outcome.failed}; "
        f"{payments.reversals()} reversals in the payments table"
    )
    payments.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--compensations", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    import os

    os.environ.setdefault("TOURNIQUET_LEDGER", "unused")  # the compensator's payments are set below
    with PostgresServer(durable=True) as server:
        if args.rows:
            with PostgresLedger(server.url) as ledger:  # creates the schema
                began = time.perf_counter()
                load(server.url, args.rows, args.agents, args.seed)
                print(f"loaded {args.rows} actions ({2 * args.rows} subjects) in {time.perf_counter() - began:.0f}s")
                bench_blast_radius(ledger)
        if args.compensations:
            os.environ["DEMO_PAYMENTS"] = server.dsn("compensations")
            bench_compensations(server, args.compensations, args.concurrency)


if __name__ == "__main__":
    main()
