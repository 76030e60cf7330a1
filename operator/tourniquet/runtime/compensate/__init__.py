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
(:mod:`tourniquet.shared.compensation`: window, tools, subjects, bundle revisions, ``duplicatesOnly``) and
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

from tourniquet.runtime.compensate.command import import_compensators, main
from tourniquet.runtime.compensate.request import (
    COMPENSATORS,
    DETAIL_LIMIT,
    CompensationRequest,
    Compensator,
    ExitCode,
    Irreversible,
    LeaseUnavailable,
    PlanChanged,
    compensator,
    gather_plan,
)
from tourniquet.runtime.compensate.worker import CompensationWorker, Outcome, plan_outcome

__all__ = [
    "COMPENSATORS",
    "DETAIL_LIMIT",
    "CompensationRequest",
    "CompensationWorker",
    "Compensator",
    "ExitCode",
    "Irreversible",
    "LeaseUnavailable",
    "Outcome",
    "PlanChanged",
    "compensator",
    "gather_plan",
    "import_compensators",
    "main",
    "plan_outcome",
]
