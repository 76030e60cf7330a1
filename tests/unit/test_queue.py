"""The keyed work queue: one worker per key, nothing lost, nothing postponed, failures retried with backoff."""

from __future__ import annotations

import asyncio

from tourniquet.adapters.kube import ApiError
from tourniquet.reconcilers.queue import RETRY_DELAYS, PassIncomplete, WorkQueue, retry_delay


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_a_key_added_while_its_worker_runs_is_worked_on_again_after_never_beside_it():
    async def scenario() -> tuple[int, int]:
        running, most, passes = 0, 0, 0
        started = asyncio.Event()
        release = asyncio.Event()

        async def work(key: str) -> None:
            nonlocal running, most, passes
            running += 1
            most = max(most, running)
            passes += 1
            started.set()
            await release.wait()
            running -= 1

        queue: WorkQueue[str] = WorkQueue(work, name="test")
        loop = asyncio.create_task(queue.run())
        queue.add("a")
        await started.wait()
        queue.add("a")  # an event that came after the pass read its object
        queue.add("a")  # and another: still one more pass
        release.set()
        while passes < 2 or queue.scheduled("a") or running:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        loop.cancel()
        return passes, most

    passes, most = run(scenario())
    assert passes == 2
    assert most == 1


def test_a_re_assert_scheduled_later_never_postpones_a_pass_asked_for_now():
    async def scenario() -> list[str]:
        done: list[str] = []

        async def work(key: str) -> None:
            done.append(key)

        queue: WorkQueue[str] = WorkQueue(work, name="test")
        loop = asyncio.create_task(queue.run())
        queue.add("a", 0.05)
        queue.add("a", 60)  # later: ignored
        await asyncio.sleep(0.3)
        loop.cancel()
        return done

    assert run(scenario()) == ["a"]


def test_a_pass_returning_a_delay_comes_back_and_a_forgotten_key_does_not():
    async def scenario() -> tuple[int, int]:
        counts = {"open": 0, "gone": 0}

        async def work(key: str) -> float | None:
            counts[key] += 1
            return 0.05

        queue: WorkQueue[str] = WorkQueue(work, name="test")
        loop = asyncio.create_task(queue.run())
        queue.add("open")
        queue.add("gone")
        await asyncio.sleep(0.02)
        queue.forget("gone")
        await asyncio.sleep(0.03)
        queue.forget("gone")  # its pass may have rescheduled it just now
        await asyncio.sleep(0.3)
        loop.cancel()
        return counts["open"], counts["gone"]

    open_passes, gone_passes = run(scenario())
    assert open_passes >= 3
    assert gone_passes <= 2


def test_holding_a_key_keeps_its_worker_out_until_released():
    async def scenario() -> list[str]:
        order: list[str] = []

        async def work(key: str) -> None:
            order.append("pass")

        queue: WorkQueue[str] = WorkQueue(work, name="test")
        loop = asyncio.create_task(queue.run())
        async with queue.holding("a"):
            queue.add("a")
            await asyncio.sleep(0.05)
            order.append("held")
        await asyncio.sleep(0.05)
        loop.cancel()
        return order

    assert run(scenario()) == ["held", "pass"]


def test_a_failed_pass_is_retried_with_a_growing_delay_and_a_permanent_error_waits_the_longest():
    assert [retry_delay(RuntimeError("boom"), n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]
    assert retry_delay(ApiError(503, "ServiceUnavailable", "busy"), 1) == RETRY_DELAYS[0]
    assert retry_delay(ApiError(422, "Invalid", "no"), 1) == RETRY_DELAYS[-1]
    assert retry_delay(PassIncomplete("the ledger"), 2) == 2.0


def test_a_failing_key_does_not_hold_up_the_others():
    async def scenario() -> list[str]:
        done: list[str] = []

        async def work(key: str) -> None:
            if key == "bad":
                raise ApiError(500, "InternalError", "boom")
            done.append(key)

        queue: WorkQueue[str] = WorkQueue(work, name="test")
        loop = asyncio.create_task(queue.run())
        queue.add("bad")
        queue.add("good")
        await asyncio.sleep(0.1)
        loop.cancel()
        return done

    assert run(scenario()) == ["good"]


def test_a_key_coming_due_while_it_is_held_waits_for_the_holder_without_spinning():
    async def scenario() -> tuple[list[str], int]:
        done: list[str] = []
        reads = 0

        def clock() -> float:
            nonlocal reads
            reads += 1
            return asyncio.get_running_loop().time()

        async def work(key: str) -> None:
            done.append(key)

        queue: WorkQueue[str] = WorkQueue(work, name="test", clock=clock)
        loop = asyncio.create_task(queue.run())
        async with queue.holding("a"):
            queue.add("a", 0.01)  # a resync coming due while an incident's pass holds the agent
            await asyncio.sleep(0.3)
            assert done == []
            reads_while_held = reads
        await asyncio.sleep(0.05)
        loop.cancel()
        return done, reads_while_held

    done, reads = run(scenario())
    assert done == ["a"]  # worked on once the holder let go
    assert reads < 20, f"the queue read its clock {reads} times in 0.3 s waiting for one key"
