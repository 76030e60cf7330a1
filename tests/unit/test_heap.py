"""The collector is tuned once: a higher young threshold from the start, and what lives at start-up frozen once the
operator has settled, so that later collections do not walk it again."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable

from tourniquet import heap


def _tracked_anywhere(obj: object) -> bool:
    """Whether a collection would walk `obj` (frozen objects are in no generation)."""
    return any(any(o is obj for o in gc.get_objects(generation)) for generation in range(3))


class Cpu:
    """A process CPU clock the test drives: busy adds a second of CPU per read, quiet nothing."""

    def __init__(self) -> None:
        self.busy = True
        self.seconds = 0.0

    def __call__(self) -> float:
        self.seconds += 1.0 if self.busy else 0.0
        return self.seconds


@contextlib.asynccontextmanager
async def tuning(cpu: Callable[[], float]) -> AsyncIterator[None]:
    task = asyncio.create_task(heap.tune_heap(cpu, check_seconds=0.01))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_what_lives_at_start_up_is_frozen_once_the_operator_has_settled_and_not_before() -> None:
    before = gc.get_threshold()
    long_lived = [{"agent": f"agent-{i}"} for i in range(100)]
    cpu = Cpu()
    async with tuning(cpu):
        await asyncio.sleep(0.2)  # some 20 checks, every one busy (the initial listings)
        assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD
        assert gc.get_freeze_count() == 0 and _tracked_anywhere(long_lived), "nothing frozen while busy"
        cpu.busy = False
        await _until(lambda: gc.get_freeze_count() > 0)
        assert not _tracked_anywhere(long_lived), "a collection no longer walks it"
    assert gc.get_freeze_count() == 0 and _tracked_anywhere(long_lived), "stopped: nothing left frozen"
    assert gc.get_threshold() == before
