"""Python's garbage collector, tuned once at start-up.

An operator serving 1,000 agents holds hundreds of thousands of long-lived objects (Kopf's copies of every
body, its indexes, the agents' parsed specs), and the collector would walk them again and again. So:

- the young generation is collected after YOUNG_THRESHOLD net allocations instead of Python's 700: most of a
  burst's objects (bodies, patches, responses) are freed by reference counting before a collection would walk
  them, and fewer are promoted to be walked again by the older generations;
- once the operator has settled after start-up (its initial listings handled: the process has used less than
  a tenth of a CPU for a few seconds in a row), what survives a full collection is frozen (`gc.freeze`): later
  collections, a full one included, walk only what was allocated since. Frozen objects are still freed as soon
  as nothing refers to them; only garbage cycles among them would stay, at most what was alive at start-up.

Stopping (cancelling :func:`tune_heap`) leaves the collector as it found it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

YOUNG_THRESHOLD = 10_000  # Python's default is 700
QUIET_CPU = 0.1  # CPU seconds per second under which the process counts as settled
QUIET_CHECKS = 3  # that many one-second checks in a row


async def tune_heap(
    cpu: Callable[[], float] = time.process_time, check_seconds: float = 1.0, quiet_checks: int = QUIET_CHECKS
) -> None:
    """Raise the young threshold now; freeze once the process has settled; run until cancelled."""
    young, *older = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, *older)
    try:
        quiet, last = 0, cpu()
        while quiet < quiet_checks:
            await asyncio.sleep(check_seconds)
            now = cpu()
            quiet = quiet + 1 if now - last < QUIET_CPU * check_seconds else 0
            last = now
        started = time.perf_counter()
        gc.collect()
        gc.freeze()
        log.info(
            "Settled after start-up: froze %d objects (%.0f ms)",
            gc.get_freeze_count(),
            (time.perf_counter() - started) * 1000,
        )
        await asyncio.Event().wait()  # until cancelled
    finally:
        gc.unfreeze()
        gc.set_threshold(young, *older)
