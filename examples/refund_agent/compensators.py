"""How the refund agent's actions are undone: what ``python -m tourniquet.runtime.compensate`` imports.

``TOURNIQUET_COMPENSATORS=refund_agent.compensators``. The payments service is the one in the ledger's
database (``DEMO_PAYMENTS``, else the ledger's own ``TOURNIQUET_LEDGER``/``TOURNIQUET_LEDGER_URL_FILE``).
The reversal is keyed by the refunding action's idempotency key, the key the refund was made with, so a
reversal attempted twice (a worker killed between the call and its record) reverses once.
"""

from __future__ import annotations

import atexit
import functools
import os

from refund_agent.payments import Payments
from tourniquet.runtime import Action, compensator
from tourniquet.runtime.ledger import ledger_target_from_env


@functools.cache
def payments() -> Payments:
    service = Payments(os.environ.get("DEMO_PAYMENTS") or ledger_target_from_env(os.environ))
    atexit.register(service.close)
    return service


@compensator("issue_refund")
def reverse_refund(action: Action) -> None:
    payments().reverse(action.idempotency_key)
