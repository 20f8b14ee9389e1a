"""Per-connection flow control: credit-based, so no side buffers without bound.

A sender may have at most `window` bytes of a connection in flight; the receiver
grants credit back as it delivers bytes to its socket. Sans-I/O bookkeeping only.

The receiver may grow a connection's window (and grant the difference): one that
delivers a whole window within `GROW_WITHIN` seconds is a bulk transfer whose path holds
more than the window (a cluster's port-forward has several buffers in a row), and it was
waiting for credit, not for its reader. The window doubles up to `max_window`, as TCP's
receive buffer grows; a window never shrinks, and it bounds what the receiver buffers for a
reader that stops. What all windows grew by together stays within `growth_budget`, so a
thousand fast connections whose readers then stop cannot hold gigabytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mirrord.protocol.codec import ProtocolError
from mirrord.protocol.messages import MAX_CHUNK

INITIAL_WINDOW = 4 * MAX_CHUNK
#: the largest window a fast connection grows to (the Mux's receivers)
MAX_WINDOW = 16 * 1024 * 1024
#: what the windows of one receiver (a Mux: one link) may grow by in total
GROWTH_BUDGET = 64 * 1024 * 1024
GROW_WITHIN = 0.05


class SendCredit:
    """How many more bytes each connection may send."""

    def __init__(self, window: int = INITIAL_WINDOW) -> None:
        self.window = window
        self._left: dict[int, int] = {}

    def open(self, conn: int) -> None:
        self._left[conn] = self.window

    def forget(self, conn: int) -> None:
        self._left.pop(conn, None)

    def available(self, conn: int) -> int:
        return self._left.get(conn, 0)

    def spend(self, conn: int, amount: int) -> None:
        if conn in self._left:  # (a connection forgotten meanwhile spends nothing)
            self._left[conn] -= amount

    def grant(self, conn: int, amount: int) -> None:
        if conn in self._left:
            self._left[conn] += amount


class ReceiveCredit:
    """Counts what the peer sent and what was delivered; says when to grant more."""

    def __init__(
        self,
        window: int = INITIAL_WINDOW,
        max_window: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        growth_budget: int = GROWTH_BUDGET,
    ) -> None:
        self.window = window
        self.max_window = window if max_window is None else max(max_window, window)
        self._clock = clock
        self.growth_budget = growth_budget
        self.grown = 0  # what the open connections' windows grew by, in total
        self._in_flight: dict[int, int] = {}
        self._undelivered_credit: dict[int, int] = {}
        self._windows: dict[int, int] = {}
        #: per connection: when its current window's worth of deliveries began, and how much
        self._round: dict[int, tuple[float, int]] = {}

    def open(self, conn: int) -> None:
        self._in_flight[conn] = 0
        self._undelivered_credit[conn] = 0
        self._windows[conn] = self.window
        self._round[conn] = (self._clock(), 0)

    def forget(self, conn: int) -> None:
        self._in_flight.pop(conn, None)
        self._undelivered_credit.pop(conn, None)
        self.grown -= self._windows.pop(conn, self.window) - self.window
        self._round.pop(conn, None)

    def window_of(self, conn: int) -> int:
        return self._windows.get(conn, self.window)

    def received(self, conn: int, amount: int) -> None:
        """The peer sent `amount` bytes; more than its window is a protocol error."""
        total = self._in_flight.get(conn, 0) + amount
        # delivered bytes whose credit is still batched up were never granted back:
        # the peer may not use them yet, so they count against its window
        if total + self._undelivered_credit.get(conn, 0) > self.window_of(conn):
            raise ProtocolError(f"connection {conn}: peer overran its flow-control window")
        self._in_flight[conn] = total

    def delivered(self, conn: int, amount: int) -> int:
        """`amount` bytes reached the socket; returns the credit to grant now (0: wait)."""
        if conn not in self._in_flight:
            return 0
        self._in_flight[conn] -= amount
        pending = self._undelivered_credit[conn] + amount
        window = self._windows[conn]
        if window < self.max_window:
            started, count = self._round[conn]
            count += amount
            if count < window:
                self._round[conn] = (started, count)
            else:
                now = self._clock()
                self._round[conn] = (now, 0)
                grown = min(window * 2, self.max_window)
                if (
                    now - started <= GROW_WITHIN
                    and self.grown + grown - window <= self.growth_budget
                ):
                    self.grown += grown - window
                    self._windows[conn] = grown
                    self._undelivered_credit[conn] = 0
                    return pending + grown - window  # at once: the sender is waiting
        # batch grants: one Credit frame per quarter window, not one per chunk
        if pending * 4 < window:
            self._undelivered_credit[conn] = pending
            return 0
        self._undelivered_credit[conn] = 0
        return pending
