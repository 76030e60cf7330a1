"""Python's garbage collector, tuned once at start-up.

An operator serving 1,000 agents holds hundreds of thousands of long-lived objects (Kopf's copies of every
body, its indexes, the agents' parsed specs), and the collector would walk them again and again. So:

- the young generation is collected after YOUNG_THRESHOLD net allocations instead of Python's 700. A burst of
  100 SEV1s holds some 75,000 tracked objects at once (a hundred passes in flight, Kopf's bodies and patches of
  every watch event) that reference counting frees when it ends. Collected every 10,000, they were walked 7-8
  times in each burst and those promoted walked again by the middle generation: 70-75 ms of a burst's CPU on the
  emulated server. At 200,000 a burst mostly runs with no collection and the in-flight objects are freed before
  any collection sees them. A collection then walks what the bursts and their releases left behind (Kopf's garbage
  cycles, some 50,000 objects each), about one every two, 0.15-0.25 s, now and then within a burst: a third less
  collection work than at 10,000, and most of it outside the bursts;
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

YOUNG_THRESHOLD = 200_000  # Python's default is 700; above a burst's objects in flight
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
