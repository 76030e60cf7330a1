"""The demo refund agent: the Tourniquet runtime around a (fake) model deciding refund tickets.

Each ticket is a customer asking for a refund of an order. The "model" looks the order up, and refunds
it unless it was refunded before. It misbehaves on demand: with ``misbehave=p`` it skips that check with
probability ``p``, so a customer asking twice gets refunded twice: the duplicate-refund incident. Every
refund goes through the runtime's guard: it is recorded in the ledger with its subjects (``order:<id>``
first, then ``customer:<id>``), its amount in USD cents, the task and bundle revision, and a decision
trace (the ticket as the model input, the order as retrieved context, the decision as model output);
the payments service gets the action's idempotency key, which is how the compensator finds the refund.

Run from the repository root (``PYTHONPATH=examples``)::

    python -m refund_agent.agent --ledger postgresql://... --tickets 500 --repeat 0.3 --misbehave 1.0

or in a pod, with the runtime configured from the environment (``TOURNIQUET_AGENT`` and the ledger,
see ``tourniquet.runtime.worker``). The compensators are in :mod:`refund_agent.compensators`.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from refund_agent.payments import Payments
from tourniquet.runtime import Guard, Skipped, StaticControl, current_idempotency_key, open_ledger

AGENT = "refund-agent"
UNIT = "USD cents"
EXAMPLE = Path(__file__).resolve().parent.parent / "refund-agent.yaml"


@functools.cache
def bundle() -> dict[str, Any]:
    """The refund agent's bundle, as examples/refund-agent.yaml declares it (and the operator mounts it)."""
    for doc in yaml.safe_load_all(EXAMPLE.read_text()):
        if doc and doc.get("kind") == "AgentDeployment":
            found: dict[str, Any] = doc["spec"]["bundle"]
            return found
    raise LookupError(f"no AgentDeployment in {EXAMPLE}")


def tool_effects() -> dict[str, str]:
    return {t["name"]: t.get("sideEffects", "write") for t in bundle()["tools"]}


@dataclass(frozen=True)
class Reply:
    """What the agent answered, and the refund it made (the refunding action's idempotency key), if any."""

    text: str
    refund: str | None = None


@dataclass(frozen=True)
class Ticket:
    id: str
    order_id: str
    customer: str
    amount_cents: int
    text: str


class RefundAgent:
    """Decides tickets with a fake model; ``misbehave`` is the probability it skips the already-refunded check."""

    def __init__(self, guard: Guard, payments: Payments, *, misbehave: float = 0.0, seed: int = 0) -> None:
        self.guard = guard
        self.payments = payments
        self.misbehave = misbehave
        self.random = random.Random(seed)
        self.lookup_order = guard.tool("lookup_order")(self._lookup_order)
        self.issue_refund = guard.tool(
            "issue_refund",
            subjects=lambda a: [f"order:{a['order_id']}", f"customer:{a['customer']}"],
            amount=lambda a: int(a["amount_cents"]),
            amount_unit=UNIT,
        )(self._issue_refund)

    def _lookup_order(self, order_id: str) -> dict[str, Any] | None:
        return self.payments.order(order_id)

    def _issue_refund(self, order_id: str, customer: str, amount_cents: int) -> str:
        key = current_idempotency_key()
        assert key is not None, "called through the guard"
        return self.payments.refund(order_id, amount_cents, idempotency_key=key)

    def decide(self, ticket: Ticket, order: dict[str, Any] | None) -> dict[str, Any]:
        """The fake model: refund an eligible order once; a misbehaving one forgets to check."""
        if order is None:
            return {"action": "reply", "text": "I could not find that order."}
        careless = self.random.random() < self.misbehave
        if order["refunded_cents"] > 0 and not careless:
            return {"action": "reply", "text": "This order was already refunded."}
        return {"action": "issue_refund", "order_id": ticket.order_id, "amount_cents": order["amount_cents"]}

    def handle(self, ticket: Ticket) -> Reply:
        with self.guard.task("refund_request", task_id=ticket.id) as trace:
            trace.model_input({"system": bundle()["prompt"]["template"], "user": ticket.text})
            order = self.lookup_order(ticket.order_id)
            if isinstance(order, Skipped):
                return Reply(order.message)
            trace.retrieved_context(order)
            decision = self.decide(ticket, order)
            trace.model_output(decision)
            if decision["action"] != "issue_refund":
                return Reply(str(decision["text"]))
            result = self.issue_refund(ticket.order_id, ticket.customer, decision["amount_cents"])
            if isinstance(result, Skipped):
                return Reply(result.message)
            return Reply(f"Refunded order {ticket.order_id}.", refund=result)


def tickets(
    orders: Iterable[tuple[str, str, int]], *, prefix: str, repeat_of: Iterable[tuple[str, str, int]] = ()
) -> Iterator[Ticket]:
    """A first request for each of ``orders``, then a repeated request for each of ``repeat_of``."""
    n = 0
    for wave, source in (("first", orders), ("again", repeat_of)):
        for order_id, customer, amount in source:
            n += 1
            text = f"Hi, please refund order {order_id}, it arrived broken."
            if wave == "again":
                text += " I am asking again!"
            yield Ticket(f"{prefix}-{n}", order_id, customer, amount, text)


def make_orders(count: int, *, prefix: str, seed: int = 0) -> list[tuple[str, str, int]]:
    rng = random.Random(seed)
    return [(f"{prefix}{i}", f"c{rng.randrange(count // 3 + 1)}", rng.randrange(500, 20000)) for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refund_agent.agent", description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", required=True, help="the ledger (and payments) database: URL or SQLite file")
    parser.add_argument("--tickets", type=int, default=200, help="new orders to get refund requests for")
    parser.add_argument("--repeat", type=float, default=0.2, help="the share of customers who ask twice")
    parser.add_argument("--misbehave", type=float, default=0.0, help="probability of skipping the refunded check")
    parser.add_argument("--prefix", default="o", help="order id prefix (use another one for each run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    payments = Payments(args.ledger)
    orders = make_orders(args.tickets, prefix=args.prefix, seed=args.seed)
    payments.add_orders(orders)
    rng = random.Random(args.seed)
    again = [o for o in orders if rng.random() < args.repeat]
    with open_ledger(args.ledger) as ledger:
        guard = Guard(StaticControl(), ledger, agent=AGENT, tools=tool_effects(), bundle_revision=1)
        agent = RefundAgent(guard, payments, misbehave=args.misbehave, seed=args.seed)
        answers = [agent.handle(t) for t in tickets(orders, prefix=args.prefix, repeat_of=again)]
    refunds = sum(1 for answer in answers if answer.refund)
    summary = {"tickets": len(answers), "refunds": refunds, "overpaidOrders": len(payments.overpaid_orders())}
    print(json.dumps(summary))
    payments.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
