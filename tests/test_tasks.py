"""wire/tasks.TaskSet: the agent's and the intproxy's task per connection, on both loops."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest
from helpers import event_loops

from mirrord.wire.tasks import TaskSet

pytestmark = pytest.mark.anyio


@pytest.fixture(params=event_loops())
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


async def test_the_tasks_end_with_the_group_and_their_cleanup_runs() -> None:
    cleaned: list[int] = []
    started = anyio.Event()

    async def work(n: int) -> None:
        try:
            started.set()
            await anyio.sleep_forever()
        finally:
            cleaned.append(n)

    tasks = TaskSet("a test task")
    async with anyio.create_task_group() as tg:
        tg.start_soon(tasks.run)
        for n in range(3):
            tasks.spawn(work, n)
        await started.wait()
        assert len(tasks) == 3
        tg.cancel_scope.cancel()
    assert sorted(cleaned) == [0, 1, 2] and len(tasks) == 0


async def test_a_failing_task_is_logged_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fail() -> None:
        raise RuntimeError("boom")

    done = anyio.Event()

    async def finish() -> None:
        await anyio.sleep(0.05)
        done.set()

    tasks = TaskSet("a test task")
    with caplog.at_level(logging.ERROR, logger="mirrord"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(tasks.run)
            tasks.spawn(fail)
            tasks.spawn(finish)
            with anyio.fail_after(5):
                await done.wait()
            tg.cancel_scope.cancel()
    assert "a test task failed" in caplog.text and "boom" in caplog.text
