"""The heap keeper: full garbage collections happen at quiet moments, never during containment."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import AsyncIterator, Callable

import pytest

from tourniquet import heap
from tourniquet.reconcilers import lane

FAST = heap.HeapSettings(full_seconds=3600, quiet_seconds=0.0, check_seconds=0.01, young_collections=0)


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _tracked_anywhere(obj: object) -> bool:
    """Whether a collection would walk `obj` (frozen objects are in no generation)."""
    return any(any(o is obj for o in gc.get_objects(generation)) for generation in range(3))


@contextlib.asynccontextmanager
async def running(settings: heap.HeapSettings, clock: Callable[[], float] | None = None) -> AsyncIterator[None]:
    task = asyncio.create_task(heap.keep_heap(settings, clock) if clock else heap.keep_heap(settings))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gc.unfreeze()


async def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_at_a_quiet_moment_what_survives_is_frozen_and_later_collections_skip_it() -> None:
    long_lived = [{"agent": f"agent-{i}"} for i in range(100)]
    async with running(FAST):
        await _until(lambda: gc.get_freeze_count() > 0)
        assert not _tracked_anywhere(long_lived), "a collection would no longer walk it"
    assert _tracked_anywhere(long_lived), "a stopped keeper leaves nothing frozen"


async def test_nothing_is_frozen_or_collected_in_full_while_a_containment_pass_runs() -> None:
    async with lane.containment_pass(), running(FAST):
        await asyncio.sleep(0.3)
        assert gc.get_freeze_count() == 0


async def test_freezing_waits_until_containment_has_been_quiet_for_a_while() -> None:
    settings = heap.HeapSettings(full_seconds=3600, quiet_seconds=0.5, check_seconds=0.01, young_collections=0)
    async with lane.containment_pass():
        pass
    async with running(settings):
        await asyncio.sleep(0.2)
        assert gc.get_freeze_count() == 0, "a pass ended 0.2 s ago"
        await _until(lambda: gc.get_freeze_count() > 0)


async def test_garbage_cycles_among_frozen_objects_are_reclaimed_by_the_periodic_full_collection() -> None:
    now = [0.0]
    a, b = Node(), Node()
    a.other, b.other = b, a
    alive = weakref.ref(a)
    async with running(FAST, clock=lambda: now[0]):
        await _until(lambda: gc.get_freeze_count() > 0)
        del a, b
        gc.collect()
        assert alive() is not None, "frozen: an ordinary collection keeps the cycle"
        now[0] = 3600.0
        await _until(lambda: alive() is None)


async def test_a_burst_runs_without_automatic_collection_which_resumes_at_the_next_quiet_moment() -> None:
    settings = heap.HeapSettings(full_seconds=3600, quiet_seconds=0.2, check_seconds=0.01, young_collections=0)
    async with running(settings):
        await _until(lambda: gc.get_freeze_count() > 0)
        async with lane.containment_pass():
            assert not gc.isenabled(), "held from the first pass of a burst"
            a, b = Node(), Node()
            a.other, b.other = b, a  # garbage made in the burst (a cycle)
            alive = weakref.ref(a)
            del a, b
            await asyncio.sleep(0.1)
            assert alive() is not None and not gc.isenabled()
        assert not gc.isenabled(), "the pass just ended: not quiet yet"
        await _until(gc.isenabled)
        assert alive() is None, "collected at the quiet moment"
    assert gc.isenabled()


async def test_a_hold_ends_after_max_hold_seconds_even_while_containment_goes_on() -> None:
    settings = heap.HeapSettings(
        full_seconds=3600, quiet_seconds=0.2, check_seconds=0.01, young_collections=0, max_hold_seconds=0.3
    )
    async with running(settings):
        await _until(lambda: gc.get_freeze_count() > 0)
        async with lane.containment_pass():
            assert not gc.isenabled()
            await _until(gc.isenabled, timeout=2)
        async with lane.containment_pass():
            assert gc.isenabled(), "no new hold before a quiet moment"
        await asyncio.sleep(0.4)
        async with lane.containment_pass():
            assert not gc.isenabled(), "after a quiet moment, the next burst is held again"
    assert gc.isenabled(), "a stopped keeper resumes automatic collection"


async def test_without_the_keeper_containment_does_not_touch_the_collector() -> None:
    async with lane.containment_pass():
        assert gc.isenabled()
    await asyncio.wait_for(heap.keep_heap(heap.HeapSettings(full_seconds=0, check_seconds=0.01)), 1)
    async with lane.containment_pass():
        assert gc.isenabled()


def test_the_setting_is_read_from_the_environment_and_a_bad_value_says_which() -> None:
    assert heap.HeapSettings.from_env({"TOURNIQUET_GC_FULL_SECONDS": "600"}).full_seconds == 600
    assert heap.HeapSettings.from_env({}).full_seconds == 3600
    with pytest.raises(ValueError, match="TOURNIQUET_GC_FULL_SECONDS='soon' is not a number"):
        heap.HeapSettings.from_env({"TOURNIQUET_GC_FULL_SECONDS": "soon"})
    with pytest.raises(ValueError, match="must be 0"):
        heap.HeapSettings.from_env({"TOURNIQUET_GC_FULL_SECONDS": "-1"})


async def test_zero_turns_the_keeper_off() -> None:
    await asyncio.wait_for(heap.keep_heap(heap.HeapSettings(full_seconds=0, check_seconds=0.01)), 1)
    assert gc.get_freeze_count() == 0
