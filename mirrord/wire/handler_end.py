"""A relayed connection of a Mux whose local end is an object in this process, run by
calls both ways: no socket, no task, no queue between the two.

The agent's HTTP engine talks to the developer's app this way: each matching request's
bytes become Data frames as the engine writes them, and the app's answer reaches the
engine in the link's read callback. A pair of pumping tasks per stolen connection cost
more than the rest of the request.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from mirrord.protocol import Close, Credit, Eof
from mirrord.wire.ends import Waiting, send_within_credit

if TYPE_CHECKING:
    from mirrord.wire.mux import Mux

#: Bytes the handler sent beyond the peer's credit above which it is asked to pause.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class Handler:
    """What owns a HandlerEnd: told what the peer does. `end` is set when attached."""

    end: HandlerEnd | None = None

    def peer_data(self, data: bytes) -> None:
        raise NotImplementedError

    def peer_eof(self) -> None:
        raise NotImplementedError

    def peer_gone(self, reset: bool) -> None:
        """The connection ended without our `close()`: after both EOFs, or reset (by the
        peer, or its link is gone)."""
        raise NotImplementedError

    def send_paused(self, paused: bool) -> None:
        """True: what we send waits for the peer's credit; stop feeding it. False: go on."""
        raise NotImplementedError


class HandlerEnd:
    def __init__(self, mux: Mux, waiting: Waiting, handler: Handler) -> None:
        self.mux = mux
        self.conn = waiting.conn
        self.handler = handler
        self.peer_closed = waiting.peer_closed
        self.held: deque[memoryview] = deque()  # sent by the handler, beyond our credit
        self.held_bytes = 0
        self.paused = False  # the handler was told to pause
        self.eof_pending = False  # the handler's EOF waits behind `held`
        self.sent_eof = False
        self.got_eof = False
        self.link_congested = mux.congested
        self.holding_credit = False  # the handler's own consumer is slow
        self.ungranted = 0
        self.done = False
        self.early = waiting.frames

    def start(self) -> None:
        """Deliver what arrived before the handler was attached."""
        while self.early and not self.done:
            data = self.early.popleft()
            self.deliver_eof() if data is None else self.deliver(data)

    # -- the handler's side ------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview) -> None:
        if self.done or self.eof_pending or not data:
            return
        # held (and maybe queued by the link) after we return: only immutable bytes
        if isinstance(data, bytes) or (isinstance(data, memoryview) and data.readonly):
            view = memoryview(data)
        else:
            view = memoryview(bytes(data))
        self.held.append(view)
        self.held_bytes += len(view)
        self._flush()
        if self.held_bytes > HIGH_WATER and not self.paused:
            self.paused = True
            self.handler.send_paused(True)

    def send_eof(self) -> None:
        if not self.done and not self.eof_pending:
            self.eof_pending = True
            self._flush()

    def hold_credit(self, hold: bool) -> None:
        """Hold back credit (the handler's consumer is slow), so the peer stops sending."""
        self.holding_credit = hold
        if not hold and self.ungranted and not self.done:
            amount, self.ungranted = self.ungranted, 0
            self._grant(amount)

    def close(self, reset: bool = False) -> None:
        """The handler is done with the connection: its EOF, then Close (or a reset)."""
        if self.done:
            return
        self.done = True
        if not self.mux.forget(self.conn, self):
            return
        if not reset and not self.sent_eof:
            self.mux.tell(Eof(conn=self.conn))
        if reset or not self.peer_closed:
            self.mux.tell(Close(conn=self.conn, reset=reset))

    # -- the Mux's side ----------------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        if self.done or self.got_eof:
            return
        self.handler.peer_data(data)
        if self.done:
            return
        if self.holding_credit:
            self.ungranted += len(data)
        else:
            self._grant(len(data))

    def deliver_eof(self) -> None:
        if self.done or self.got_eof:
            return
        self.got_eof = True
        self.handler.peer_eof()
        self._maybe_finished()

    def on_credit(self) -> None:
        self._flush()

    def on_peer_close(self) -> None:
        self.peer_closed = True
        self._maybe_finished()

    def on_congestion(self, congested: bool) -> None:
        self.link_congested = congested
        if not congested:
            self._flush()

    def abort(self) -> None:
        """The peer reset the connection, or the link is gone (the Mux forgot it)."""
        if not self.done:
            self.done = True
            self.handler.peer_gone(reset=True)

    # -- internals ---------------------------------------------------------------------

    def _grant(self, amount: int) -> None:
        if grant := self.mux.receive_credit.delivered(self.conn, amount):
            self.mux.tell(Credit(conn=self.conn, amount=grant))

    def _flush(self) -> None:
        if not self.done and not self.link_congested:
            sent = send_within_credit(self.mux, self.conn, self.held)
            if sent is None:
                return
            self.held_bytes -= sent
        if self.paused and self.held_bytes < LOW_WATER and not self.done:
            self.paused = False
            self.handler.send_paused(False)
        if self.eof_pending and not self.held and not self.sent_eof and not self.done:
            self.sent_eof = True
            self.mux.tell(Eof(conn=self.conn))
            self._maybe_finished()

    def _maybe_finished(self) -> None:
        if self.done or not (self.sent_eof and self.got_eof):
            return
        self.done = True
        if self.mux.forget(self.conn, self) and not self.peer_closed:
            self.mux.tell(Close(conn=self.conn, reset=False))
        self.handler.peer_gone(reset=False)
