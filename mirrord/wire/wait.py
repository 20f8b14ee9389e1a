"""Waiting for a future with a timeout on the loop itself: one timer and one callback.

asyncio.wait_for(shield(...)) costs two tasks, anyio.fail_after a cancel scope and a
checkpoint; the agent waits like this once or twice per stolen connection."""

from __future__ import annotations

import asyncio


async def within(event: asyncio.Future[None], timeout: float | None) -> bool:
    """Wait up to `timeout` seconds (None: for ever) for `event`, which this never
    cancels; True if it happened."""
    if event.done():
        return True
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[bool] = loop.create_future()

    def settle(result: bool) -> None:
        if not waiter.done():
            waiter.set_result(result)

    timer = None if timeout is None else loop.call_later(timeout, settle, False)
    event.add_done_callback(lambda _: settle(True))
    try:
        return await waiter
    finally:
        if timer is not None:
            timer.cancel()
