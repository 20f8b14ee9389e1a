"""Per-connection flow control: credit-based, so no side buffers without bound.

A sender may have at most `window` bytes of a connection in flight; the receiver
grants credit back as it delivers bytes to its socket. Sans-I/O bookkeeping only.
"""

from __future__ import annotations

from mirrord.protocol.codec import ProtocolError
from mirrord.protocol.messages import MAX_CHUNK

INITIAL_WINDOW = 4 * MAX_CHUNK


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

    def __init__(self, window: int = INITIAL_WINDOW) -> None:
        self.window = window
        self._in_flight: dict[int, int] = {}
        self._undelivered_credit: dict[int, int] = {}

    def open(self, conn: int) -> None:
        self._in_flight[conn] = 0
        self._undelivered_credit[conn] = 0

    def forget(self, conn: int) -> None:
        self._in_flight.pop(conn, None)
        self._undelivered_credit.pop(conn, None)

    def received(self, conn: int, amount: int) -> None:
        """The peer sent `amount` bytes; more than its window is a protocol error."""
        total = self._in_flight.get(conn, 0) + amount
        # delivered bytes whose credit is still batched up were never granted back:
        # the peer may not use them yet, so they count against its window
        if total + self._undelivered_credit.get(conn, 0) > self.window:
            raise ProtocolError(f"connection {conn}: peer overran its flow-control window")
        self._in_flight[conn] = total

    def delivered(self, conn: int, amount: int) -> int:
        """`amount` bytes reached the socket; returns the credit to grant now (0: wait)."""
        if conn not in self._in_flight:
            return 0
        self._in_flight[conn] -= amount
        pending = self._undelivered_credit[conn] + amount
        # batch grants: one Credit frame per quarter window, not one per chunk
        if pending * 4 < self.window:
            self._undelivered_credit[conn] = pending
            return 0
        self._undelivered_credit[conn] = 0
        return pending
