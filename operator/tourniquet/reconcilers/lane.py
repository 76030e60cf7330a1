"""The background lane: containment first, paperwork after.

Work that is not containment (Events, incidents' finalizers, agents' statuses) is handed to
:func:`after_containment` and runs in the background once no containment pass (:func:`containment_pass`)
has run for a quiet moment, or after a bounded delay. One lane per event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable

# Containment first, paperwork after: events (and incidents' finalizers, agents' statuses) wait until no
# containment pass has run in this loop for QUIET_SECONDS (so a burst of incidents, which arrive from the
# watch a few at a time, is not slowed by them), but never longer than EVENT_DEFER_SECONDS; an agent's full pass,
# which reads more than a status write, never longer than PASS_DEFER_SECONDS.
EVENT_DEFER_SECONDS = 2.0
PASS_DEFER_SECONDS = 30.0
QUIET_SECONDS = 0.25


class _LoopState:
    def __init__(self) -> None:
        self.busy = 0
        self.last_done = float("-inf")  # time.monotonic() when the last pass ended
        self.idle = asyncio.Event()
        self.idle.set()
        self.waiting: list[tuple[float, int, Callable[[], Awaitable[None]]]] = []  # a heap, by deadline
        self.order = itertools.count()
        self.waiter: asyncio.Task[None] | None = None  # the one task waiting for a quiet moment
        self.pending: set[asyncio.Task[None]] = set()  # work started, not finished


_states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()


def _state() -> _LoopState:
    loop = asyncio.get_running_loop()
    state = _states.get(loop)
    if state is None:
        state = _states[loop] = _LoopState()
    return state


@contextlib.asynccontextmanager
async def containment_pass() -> AsyncIterator[None]:
    """Mark a containment pass as running: events posted meanwhile wait for it."""
    state = _state()
    state.busy += 1
    state.idle.clear()
    try:
        yield
    finally:
        state.busy -= 1
        state.last_done = time.monotonic()
        if state.busy == 0:
            state.idle.set()


def containment_quiet_for(seconds: float) -> bool:
    """No containment pass is running in this loop, and none ended in the last `seconds`."""
    state = _state()
    return state.busy == 0 and time.monotonic() - state.last_done >= seconds


def after_containment(work: Callable[[], Awaitable[None]], at_most: float | None = None) -> None:
    """Run `work` in the background once containment is quiet (or after `at_most` seconds, by default
    EVENT_DEFER_SECONDS)."""
    state = _state()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (EVENT_DEFER_SECONDS if at_most is None else at_most)
    heapq.heappush(state.waiting, (deadline, next(state.order), work))
    if state.waiter is None or state.waiter.done():
        state.waiter = loop.create_task(_start_when_quiet(state))


async def _start_when_quiet(state: _LoopState) -> None:
    """One waiter for all the deferred work (hundreds of items after a burst): it starts everything when no
    containment pass has run for QUIET_SECONDS, or what has waited its longest."""
    loop = asyncio.get_running_loop()
    while state.waiting:
        deadline = state.waiting[0][0]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.idle.wait(), max(0.0, deadline - loop.time()))
        quiet = containment_quiet_for(QUIET_SECONDS)
        if not quiet and state.waiting[0][0] > loop.time():
            quiet_for = time.monotonic() - state.last_done
            await asyncio.sleep(max(0.0, min(QUIET_SECONDS - quiet_for, state.waiting[0][0] - loop.time())))
            continue
        while state.waiting and (quiet or state.waiting[0][0] <= loop.time()):
            _, _, work = heapq.heappop(state.waiting)
            task = loop.create_task(_run(work))
            state.pending.add(task)
            task.add_done_callback(state.pending.discard)


async def _run(work: Callable[[], Awaitable[None]]) -> None:
    await work()
