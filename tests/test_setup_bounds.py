"""adapter/_setup_bounds.py: one timer bounds the set-ups of many waits, and cuts them as
``asyncio.timeout`` would: the bound's own cancellation becomes the caller's error, any other
cancellation stays a cancellation, and nothing is left behind."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from adapter._setup_bounds import SetUpBounds


class _Cut(Exception):
    pass


async def _set_up(bounds: SetUpBounds, seconds: float, work: asyncio.Future[None]) -> str:
    task: asyncio.Task[object] = asyncio.current_task()  # type: ignore[assignment]
    cancelling = task.cancelling()
    slot = bounds.enter(task, seconds)
    try:
        await work
    except asyncio.CancelledError:
        if slot.cut(task, cancelling):
            raise _Cut from None
        raise
    finally:
        slot.leave(task)
    return "bound"


async def test_set_ups_with_alike_bounds_share_one_timer_and_leave_none() -> None:
    bounds = SetUpBounds("test", 1.0)
    work = asyncio.get_running_loop().create_future()
    tasks = [asyncio.create_task(_set_up(bounds, 5.0, work)) for _ in range(1000)]
    await asyncio.sleep(0)
    assert bounds.pending == 1
    work.set_result(None)
    assert await asyncio.gather(*tasks) == ["bound"] * 1000
    assert bounds.pending == 0


async def test_a_set_up_past_its_bound_is_cut_by_it_and_the_others_go_on() -> None:
    bounds = SetUpBounds("test", 1.0)
    loop = asyncio.get_running_loop()
    slow, quick = loop.create_future(), loop.create_future()
    started = loop.time()
    cut = asyncio.create_task(_set_up(bounds, 0.1, slow))
    later = asyncio.create_task(_set_up(bounds, 5.0, quick))
    with pytest.raises(_Cut):
        await cut
    assert 0.1 <= loop.time() - started < 1.0
    assert not later.done()
    quick.set_result(None)
    assert await later == "bound"
    assert bounds.pending == 0
    # The task that was cut carries no cancellation of the bound's any more.
    assert cut.cancelling() == 0


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    bounds = SetUpBounds("test", 1.0)
    work = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(_set_up(bounds, 5.0, work))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bounds.pending == 0


async def test_a_cancellation_from_elsewhere_wins_over_the_bound_at_the_same_moment() -> None:
    bounds = SetUpBounds("test", 1.0)
    work = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(_set_up(bounds, 0.05, work))
    await asyncio.sleep(0)

    def both() -> None:
        task.cancel()  # the caller's, in the same turn of the loop as the bound's timer

    slot_key = next(iter(bounds._slots))
    asyncio.get_running_loop().call_at(slot_key * 0.05, both)
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cut_that_the_set_up_swallowed_does_not_hit_the_caller_later() -> None:
    bounds = SetUpBounds("test", 1.0)

    async def swallowing() -> str:
        task: asyncio.Task[object] = asyncio.current_task()  # type: ignore[assignment]
        slot = bounds.enter(task, 0.05)
        try:
            # A set-up that ignores the cancellation (none of ours does).
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(1)
        finally:
            slot.leave(task)
        await asyncio.sleep(0.01)  # no CancelledError here
        return "went on"

    assert await swallowing() == "went on"
