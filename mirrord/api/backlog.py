"""A bounded hand-over between a producer thread and a reader that may be slow."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Backlog(Generic[T]):
    """Thread-safe, at most `size` items: when full, the oldest item goes and is counted
    in `dropped` (the producer, fed by live traffic, never waits)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a backlog holds at least one item")
        self._items: deque[T] = deque()
        self._size = size
        self._ready = threading.Condition()
        self.dropped = 0
        self.closed = False

    def put(self, item: T) -> None:
        with self._ready:
            if self.closed:
                return
            if len(self._items) >= self._size:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._ready.notify_all()

    def get(self, timeout: float | None = None) -> T | None:
        """The next item; None once closed and empty, or after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while not self._items:
                left = None if deadline is None else deadline - time.monotonic()
                if self.closed or (left is not None and left <= 0):
                    return None
                self._ready.wait(left)
            return self._items.popleft()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait (without taking anything) until an item is there or the backlog closes."""
        with self._ready:
            return self._ready.wait_for(lambda: bool(self._items) or self.closed, timeout)

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        """No more items; what is already there can still be read."""
        with self._ready:
            self.closed = True
            self._ready.notify_all()
