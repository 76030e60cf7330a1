"""A keyed work queue: watch events only add a key; one worker at a time per key works on it from current state.

- A key added while its worker runs is worked on again right after (the event may have come after the read).
- A key added with a delay keeps the earliest time asked for: a re-assert never postpones an event's pass.
- What the worker returns is when to come back (a re-assert, a resync), or None.
- A worker that fails is retried with backoff (:func:`retry_delay`, the one mapping of errors to delays).
- :meth:`WorkQueue.holding` is the same exclusivity for work done outside the queue's own worker (a detection
  write on an incident, an incident's pass containing an agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Generic, TypeVar

from tourniquet.adapters.kube import ApiError

log = logging.getLogger(__name__)

K = TypeVar("K")

RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0)  # after a failed pass; a permanent error waits the longest


# Work on one object with no pass of the operator's on it meanwhile: a queue's `holding`, by (namespace, name).
Hold = Callable[[tuple[str, str]], AbstractAsyncContextManager[None]]


@contextlib.asynccontextmanager
async def unshared(key: tuple[str, str]) -> AsyncIterator[None]:
    """The Hold of code that runs outside an operator (a test, a one-off): nothing else works on the object."""
    yield


class PassIncomplete(Exception):
    """A pass wrote what it observed but could not read everything (e.g. the ledger): retried with backoff."""


def retry_delay(error: BaseException, failures: int) -> float:
    """How long to wait before working on a key again after its `failures`-th failure in a row."""
    transient = not isinstance(error, ApiError) or error.transient
    if not transient:
        return RETRY_DELAYS[-1]
    return RETRY_DELAYS[min(failures - 1, len(RETRY_DELAYS) - 1)]


class WorkQueue(Generic[K]):
    def __init__(
        self,
        work: Callable[[K], Awaitable[float | None]],
        *,
        name: str,
        concurrency: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.work = work
        self.name = name
        self.clock = clock
        self._due: dict[K, float] = {}  # key -> when it is due (the earliest asked for)
        self._heap: list[tuple[float, int, K]] = []  # (due, tie-breaker, key); stale entries skipped
        self._count = 0
        self._busy: dict[K, asyncio.Event] = {}  # keys being worked on (or held): set when done
        self._again: set[K] = set()  # added while busy: worked on again right after
        self._failures: dict[K, int] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- adding -------------------------------------------------------------------------------------------------

    def add(self, key: K, after: float = 0.0) -> None:
        """Work on `key` in `after` seconds (at once: 0), unless it is due sooner already."""
        if key in self._busy and after <= 0:
            self._again.add(key)
            return
        due = self.clock() + max(0.0, after)
        if key in self._due and self._due[key] <= due:
            return
        self._due[key] = due
        self._count += 1
        heapq.heappush(self._heap, (due, self._count, key))
        if after <= 0:
            self._start_due()
        else:
            self._wake.set()

    def forget(self, key: K) -> None:
        """No more work on `key` (it is gone): what is scheduled is dropped, its failures too."""
        self._due.pop(key, None)
        self._again.discard(key)
        self._failures.pop(key, None)

    def scheduled(self, key: K) -> bool:
        return key in self._due or key in self._again

    # -- exclusivity --------------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def holding(self, key: K) -> AsyncIterator[None]:
        """Work on `key` outside the queue's worker, with no worker (and no other holder) on it meanwhile."""
        while key in self._busy:
            await self._busy[key].wait()
        self._busy[key] = asyncio.Event()
        try:
            yield
        finally:
            self._release(key)
            self._start_due()

    # -- the workers --------------------------------------------------------------------------------------------

    def _start_due(self) -> None:
        now = self.clock()
        while self._heap and self._heap[0][0] <= now:
            due, _, key = heapq.heappop(self._heap)
            if self._due.get(key) != due:
                continue  # superseded by an earlier time, or forgotten
            del self._due[key]
            if key in self._busy:
                self._again.add(key)  # due while worked on or held: started as soon as it is free
                continue
            self._busy[key] = asyncio.Event()
            task = asyncio.get_running_loop().create_task(self._work(key), name=f"{self.name}:{key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _work(self, key: K) -> None:
        again: float | None = None
        try:
            async with self._slots:
                again = await self.work(key)
            self._failures.pop(key, None)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # whatever failed, the key is worked on again
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            again = retry_delay(error, failures)
            if isinstance(error, ApiError | PassIncomplete):
                log.warning("%s %s: pass failed, retrying in %gs: %s", self.name, _readable(key), again, error)
            else:
                log.exception("%s %s: pass failed, retrying in %gs", self.name, _readable(key), again)
        finally:
            self._release(key)
        if again is not None:
            self.add(key, again)
        self._start_due()

    def _release(self, key: K) -> None:
        """The key is free again: a pass asked for meanwhile starts now."""
        self._busy.pop(key).set()
        if key in self._again:
            self._again.discard(key)
            self.add(key)

    async def run(self) -> None:
        """Start delayed keys when they are due, until cancelled; then cancel the workers."""
        try:
            while True:
                self._start_due()
                self._wake.clear()
                timeout = max(0.0, self._heap[0][0] - self.clock()) if self._heap else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def _readable(key: object) -> str:
    return "/".join(key) if isinstance(key, tuple) else str(key)
