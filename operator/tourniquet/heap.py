"""Keep Python's garbage collections out of containment bursts.

An operator serving 1,000 agents holds some 450,000 long-lived objects (Kopf's copies of every body, its
indexes, the agents' parsed specs). A full collection walks all of them — about 0.35 s on a 2-core
machine — and a burst of incidents allocates enough to trigger one or two, in the middle of containment.
The young collections are not free either: a burst of 100 incidents triggered some 80 of them, 80-95 ms
of a burst that took the operator 0.7 s of CPU, walking bodies that would be freed moments later anyway.

So, while the keeper runs:

- when containment starts after a quiet moment, automatic collection is held (`gc.disable`): nothing is
  walked in the middle of a burst. Memory is still freed as soon as nothing refers to it; only garbage
  *cycles* wait. A hold lasts at most ``max_hold_seconds`` (then automatic collection resumes until the
  next quiet moment), so a long run of incidents cannot grow the heap without bound;
- whenever the operator is quiet (no containment pass running or just finished), the young garbage is
  collected, what survives is frozen (`gc.freeze`) and automatic collection resumes: later collections,
  a burst's included, walk only what was allocated since. Frozen objects are still freed as soon as
  nothing refers to them; only garbage cycles among them would stay, so once in a while (hourly by
  default), again at a quiet moment, everything is unfrozen and collected in full.

Setting, read once at start-up: ``TOURNIQUET_GC_FULL_SECONDS`` (3600; 0 turns the keeper off, and with it
the holds).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tourniquet.domain.settings import seconds_from_env
from tourniquet.reconcilers.lane import containment_quiet_for, on_containment_start

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeapSettings:
    full_seconds: float = 3600.0  # how often frozen objects are unfrozen and collected in full
    quiet_seconds: float = 1.0  # containment must have been quiet this long
    check_seconds: float = 2.0  # how often the keeper looks
    young_collections: int = 5  # freeze only after this many young collections (allocation since)
    max_hold_seconds: float = 5.0  # automatic collection is held at most this long during containment

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> HeapSettings:
        return cls(full_seconds=seconds_from_env(environ, "TOURNIQUET_GC_FULL_SECONDS", cls.full_seconds))


def _young_collections() -> int:
    return int(gc.get_stats()[0]["collections"])


async def keep_heap(settings: HeapSettings, clock: Callable[[], float] = time.monotonic) -> None:
    """Run until cancelled; on cancel, unfreeze and resume automatic collection (a stopped keeper leaves
    the collector as it found it)."""
    if settings.full_seconds <= 0:
        return
    last_full = clock()
    young_at_freeze = -settings.young_collections  # the first quiet moment freezes
    held_since: float | None = None  # automatic collection held since (a containment burst)
    spent = False  # a hold ran out during this busy spell: no new one until a quiet moment

    def hold() -> None:
        nonlocal held_since
        if held_since is None and not spent and gc.isenabled():
            gc.disable()
            held_since = clock()

    def resume() -> None:
        nonlocal held_since
        if held_since is not None:
            gc.enable()
            held_since = None

    unhook = on_containment_start(hold)
    try:
        while True:
            await asyncio.sleep(settings.check_seconds)
            if not containment_quiet_for(settings.quiet_seconds):
                if held_since is not None and clock() - held_since >= settings.max_hold_seconds:
                    resume()
                    spent = True
                continue
            if clock() - last_full >= settings.full_seconds:
                started = time.perf_counter()
                gc.unfreeze()
                gc.collect()
                gc.freeze()
                last_full = clock()
                log.info(
                    "Full garbage collection at a quiet moment: %.0f ms, %d objects frozen",
                    (time.perf_counter() - started) * 1000,
                    gc.get_freeze_count(),
                )
            elif held_since is not None or _young_collections() - young_at_freeze >= settings.young_collections:
                gc.collect()
                gc.freeze()
            else:
                spent = False
                continue
            resume()
            spent = False
            young_at_freeze = _young_collections()
    finally:
        unhook()
        resume()
        gc.unfreeze()
