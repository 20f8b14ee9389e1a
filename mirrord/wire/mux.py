"""Many connections over one link: relays bytes between local pipes and conn ids.

Used on both ends of the agent link: the agent attaches sockets it opened in the
target, the intproxy attaches the app's relay sockets. Frames are Data/Eof/Close/
Credit; TCP bytes are flow-controlled so that a slow reader stalls its own sender
instead of filling memory.

Two kinds of local ends. A socket (`attach_socket`: every relayed TCP connection) is
driven by event-loop callbacks: the link's reader writes its Data straight into the
socket's transport and the socket's reads go straight into Data frames, with no task
and no copy per chunk. Anything else (`attach`: UDP, mirrored streams, the HTTP
engine's socket pairs) is a `Pipe` with async receive/send, pumped by two tasks.

Over a link with a native pump (wire/pump.py), a socket is handed to the pump instead:
its bytes never reach Python. Frames of it that reached Python before the pump took it
over are replayed to the pump, which holds the rest until Python says it is done.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import anyio
import anyio.abc

from mirrord.protocol import Close, Credit, Data, Eof, Message
from mirrord.protocol.codec import encode
from mirrord.protocol.flow import MAX_WINDOW, ReceiveCredit, SendCredit
from mirrord.protocol.pump import PumpAttach, PumpReplay, PumpReset, PumpSync, PumpSynced
from mirrord.wire.ends import GONE, End, Pumped, SocketEnd, Waiting, is_datagram
from mirrord.wire.handler_end import Handler, HandlerEnd
from mirrord.wire.link import Link
from mirrord.wire.pipes import ConnectedUdpPipe, Pipe, RelayUdpPipe, TcpPipe, linger_zero


class HandedOver:
    """A connection whose socket went to the native pump, until the pump has all of it."""

    def __init__(self, conn: int) -> None:
        self.conn = conn

    # (the Mux replays this connection's frames to the pump instead of delivering them)
    def deliver(self, data: bytes) -> None:
        pass

    def deliver_eof(self) -> None:
        pass

    def on_credit(self) -> None:
        pass

    def on_peer_close(self) -> None:
        pass

    def abort(self) -> None:
        pass  # the pump resets its sockets itself when the link goes

    def on_congestion(self, congested: bool) -> None:
        pass


#: what the Mux holds for each of its connections
MuxEnd = End | HandlerEnd | HandedOver
_CONN_FRAMES = (Data, Eof, Close, Credit)

__all__ = ["ConnectedUdpPipe", "Mux", "Pipe", "RelayUdpPipe", "TcpPipe", "linger_zero"]


class Mux:
    """Owns the relayed connections of one link."""

    def __init__(self, link: Link, tg: anyio.abc.TaskGroup) -> None:
        self.link = link
        self.tg = tg
        self._pumped = link.pumped  # (a link's plane is fixed: looked at for every frame)
        self.conns: dict[int, MuxEnd] = {}
        self.send_credit = SendCredit()
        self.receive_credit = ReceiveCredit(max_window=MAX_WINDOW)
        self.congested = False
        #: sees every other message as it arrives, before it is queued for its reader: a
        #: message that announces a connection opens it here, so that the Data right
        #: behind it in the same read finds it (a server that speaks first); True takes
        #: the message (it never reaches `link.receive()`)
        self.announcements: Callable[[Message], bool | None] | None = None
        link.frame_handler = self._on_frame
        link.on_congestion = self._on_congestion

    def open(self, conn: int, datagram: bool) -> None:
        """Know `conn` now: its frames are queued until it is attached."""
        if conn in self.conns:
            return
        self.conns[conn] = Waiting(conn, datagram)
        self.send_credit.open(conn)
        self.receive_credit.open(conn)

    async def attach_socket(self, conn: int, sock: socket.socket) -> None:
        """Relay `conn` to and from a connected TCP (or unix stream) socket."""
        waiting = self._waiting(conn, datagram=False)
        if self._pumped:
            self._hand_over(waiting, sock)
            return
        end = SocketEnd(self, waiting)
        self.conns[conn] = end
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(lambda: end, sock=sock)
        except OSError:
            sock.close()
            if self.forget(conn, end):
                self.tell(Close(conn=conn, reset=True))

    def _hand_over(self, waiting: Waiting, sock: socket.socket) -> None:
        conn = waiting.conn
        credit = self.send_credit.available(conn)
        self.send_credit.forget(conn)  # (the pump counts from here)
        self.receive_credit.forget(conn)
        try:  # (the pump makes the socket non-blocking itself)
            self.link.send_nowait(PumpAttach(conn=conn, fd=sock.fileno(), credit=credit))
        except GONE:
            del self.conns[conn]
            sock.close()
            return
        sock.detach()  # the pump's now
        self.conns[conn] = HandedOver(conn)
        for data in waiting.frames:
            self._replay(Eof(conn=conn) if data is None else Data(conn=conn, data=data))
        if waiting.peer_closed:
            self._replay(Close(conn=conn, reset=False))

    def _replay(self, msg: Message) -> None:
        self.tell(PumpReplay(frame=encode(msg)))

    def attach_handler(self, conn: int, handler: Handler) -> None:
        """Relay `conn` to and from `handler`, an object run by calls (`handler.end`)."""
        end = HandlerEnd(self, self._waiting(conn, datagram=False), handler)
        self.conns[conn] = end
        handler.end = end
        end.start()

    def attach(self, conn: int, pipe: Pipe) -> None:
        """Relay `conn` to and from `pipe` (opening `conn` if needed)."""
        waiting = self._waiting(conn, pipe.datagram)
        end = Pumped(self, waiting, pipe)
        self.conns[conn] = end
        self.tg.start_soon(end.run)

    def _waiting(self, conn: int, datagram: bool) -> Waiting:
        self.open(conn, datagram)
        waiting = self.conns[conn]
        if not isinstance(waiting, Waiting):
            raise RuntimeError(f"connection {conn} is attached already")
        return waiting

    def _on_frame(self, msg: Message) -> bool:
        """Apply a connection frame as it arrives; False if `msg` is not one."""
        kind = type(msg)
        if self._pumped:
            if kind in _CONN_FRAMES:
                if type(self.conns.get(msg.conn)) is HandedOver:  # type: ignore[attr-defined]
                    self._replay(msg)
                    return True
            elif kind is PumpSync:
                if type(self.conns.get(msg.conn)) is HandedOver:  # type: ignore[attr-defined]
                    del self.conns[msg.conn]  # type: ignore[attr-defined]
                    self.tell(PumpSynced(conn=msg.conn))  # type: ignore[attr-defined]
                return True
        if kind is Data:
            end = self.conns.get(msg.conn)  # type: ignore[attr-defined]
            if end is not None:
                if not is_datagram(end):
                    self.receive_credit.received(msg.conn, len(msg.data))  # type: ignore[attr-defined]
                end.deliver(msg.data)  # type: ignore[attr-defined]
        elif kind is Credit:
            end = self.conns.get(msg.conn)  # type: ignore[attr-defined]
            if end is not None:
                self.send_credit.grant(msg.conn, msg.amount)  # type: ignore[attr-defined]
                end.on_credit()
        elif kind is Eof:
            end = self.conns.get(msg.conn)  # type: ignore[attr-defined]
            if end is not None:
                end.deliver_eof()
        elif kind is Close:
            end = self.conns.get(msg.conn)  # type: ignore[attr-defined]
            if end is None:
                pass
            elif msg.reset:  # type: ignore[attr-defined]
                self.forget(msg.conn, end)  # type: ignore[attr-defined]
                end.abort()
            else:
                # a graceful close follows both Eofs: let what is queued reach the pipe
                end.on_peer_close()
        else:
            return self.announcements is not None and bool(self.announcements(msg))
        return True

    def _on_congestion(self, congested: bool) -> None:
        self.congested = congested
        for end in list(self.conns.values()):
            end.on_congestion(congested)

    def forget(self, conn: int, end: MuxEnd) -> bool:
        """Drop `conn` if `end` still owns it; True if it did."""
        if self.conns.get(conn) is not end:
            return False
        del self.conns[conn]
        self.send_credit.forget(conn)
        self.receive_credit.forget(conn)
        return True

    def tell(self, msg: Message) -> None:
        try:
            self.link.send_nowait(msg)
        except GONE:
            pass  # the link's owner sees the broken link and cleans up

    async def reset(self, conn: int) -> None:
        """Give up on `conn` (e.g. the app never came for it); the peer is told."""
        end = self.conns.get(conn)
        if self._pumped and (end is None or type(end) is HandedOver):
            self.conns.pop(conn, None)
            self.tell(PumpReset(conn=conn))  # (if the pump still runs it)
            return
        if end is not None and self.forget(conn, end):
            end.abort()
            self.tell(Close(conn=conn, reset=True))

    async def close_all(self) -> None:
        """The link is gone: reset every local end so the app sees an error, not a hang."""
        for conn, end in list(self.conns.items()):
            self.forget(conn, end)
            end.abort()
