"""The background lane: containment first, paperwork after.

Work that is not containment (Events, incidents' finalizers, agents' statuses) is handed to
:meth:`Lane.after_containment` and runs in the background once no containment pass (:meth:`Lane.containment_pass`)
has run for a quiet moment, or after a bounded delay. One lane per operator, made at start-up (``memo.lane``) and
handed to whoever defers work on it or runs containment; a test without an operator makes its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable

# Containment first, paperwork after: events (and incidents' finalizers, agents' statuses) wait until no
# containment pass has run on the lane for QUIET_SECONDS (so a burst of incidents, which arrive from the
# watch a few at a time, is not slowed by them), but never longer than EVENT_DEFER_SECONDS; an agent's full pass,
# which reads more than a status write, never longer than PASS_DEFER_SECONDS.
EVENT_DEFER_SECONDS = 2.0
PASS_DEFER_SECONDS = 30.0
QUIET_SECONDS = 0.25


class Lane:
    """The containment passes running, and the work waiting for them to be quiet. Used from one event loop."""

    def __init__(self, *, event_defer_seconds: float = EVENT_DEFER_SECONDS) -> None:
        self.event_defer_seconds = event_defer_seconds
        self._busy = 0
        self._last_done = float("-inf")  # time.monotonic() when the last pass ended
        self._idle = asyncio.Event()
        self._idle.set()
        self._waiting: list[tuple[float, int, Callable[[], Awaitable[None]]]] = []  # a heap, by deadline
        self._order = itertools.count()
        self._waiter: asyncio.Task[None] | None = None  # the one task waiting for a quiet moment
        self._pending: set[asyncio.Task[None]] = set()  # work started, not finished
        self._closed = False

    @contextlib.asynccontextmanager
    async def containment_pass(self) -> AsyncIterator[None]:
        """Mark a containment pass as running: work deferred meanwhile waits for it."""
        self._busy += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._busy -= 1
            self._last_done = time.monotonic()
            if self._busy == 0:
                self._idle.set()

    def quiet_for(self, seconds: float) -> bool:
        """No containment pass is running, and none ended in the last `seconds`."""
        return self._busy == 0 and time.monotonic() - self._last_done >= seconds

    def after_containment(self, work: Callable[[], Awaitable[None]], at_most: float | None = None) -> None:
        """Run `work` in the background once containment is quiet (or after `at_most` seconds, by default
        `event_defer_seconds`)."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.event_defer_seconds if at_most is None else at_most)
        heapq.heappush(self._waiting, (deadline, next(self._order), work))
        if self._waiter is None or self._waiter.done():
            self._waiter = loop.create_task(self._start_when_quiet())

    async def close(self) -> None:
        """The operator is stopping: the work still waiting is dropped, the work started is cancelled, and work
        handed over from now on is dropped too."""
        self._closed = True
        self._waiting.clear()
        tasks = [task for task in (self._waiter, *self._pending) if task is not None and not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _start_when_quiet(self) -> None:
        """One waiter for all the deferred work (hundreds of items after a burst): it starts everything when no
        containment pass has run for QUIET_SECONDS, or what has waited its longest."""
        loop = asyncio.get_running_loop()
        while self._waiting:
            deadline = self._waiting[0][0]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - loop.time()))
            quiet = self.quiet_for(QUIET_SECONDS)
            if not quiet and self._waiting[0][0] > loop.time():
                quiet_for = time.monotonic() - self._last_done
                await asyncio.sleep(max(0.0, min(QUIET_SECONDS - quiet_for, self._waiting[0][0] - loop.time())))
                continue
            while self._waiting and (quiet or self._waiting[0][0] <= loop.time()):
                _, _, work = heapq.heappop(self._waiting)
                task = loop.create_task(_run(work))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)


async def _run(work: Callable[[], Awaitable[None]]) -> None:
    await work()
