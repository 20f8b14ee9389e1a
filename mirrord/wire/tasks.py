"""Cheap tasks for work started once per connection (agent and intproxy side).

anyio's `start_soon` costs tens of microseconds per task (its cancel scope and
bookkeeping), which a data plane that starts a task for every accepted connection pays
on each one. A TaskSet starts plain asyncio tasks instead and is kept by its owner's
anyio task group: when that group is cancelled, so is every task of the set (anyio's
cancel scopes and primitives work inside them as in any asyncio task).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

log = logging.getLogger("mirrord")


class TaskSet:
    def __init__(self, what: str) -> None:
        self.what = what
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        task = asyncio.get_running_loop().create_task(work(*args))
        self._tasks.add(task)  # (the loop keeps only a weak reference)
        task.add_done_callback(self._done)

    def __len__(self) -> int:
        """Tasks not finished yet."""
        return len(self._tasks)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s failed", self.what, exc_info=exc)

    async def run(self) -> None:
        """Hold the set in the caller's task group; when it is cancelled, end every task."""
        try:
            await anyio.sleep_forever()
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                with anyio.CancelScope(shield=True):
                    await asyncio.wait(tasks)
