"""A framed message link over a socket (agent and intproxy side).

The data plane of every relayed connection runs through here, so the link is driven by
the event loop's readiness callbacks rather than by a task per read: the reader hands
connection frames (Data, Eof, Close, Credit) to the Mux at once, in the loop's callback,
and queues the rest for `receive()`. The first frame a pass of the loop writes goes at
once; what else that pass writes goes out together, in one sendmsg() at its end (one
system call, and one wake-up of the peer, for the Data, Eof and Close of many
connections); what the socket does not take waits
(with its descriptors) for it to be writable. Data frames are written as a small header
plus the caller's bytes (no copy of the payload).

Over a unix socket a frame may carry a file descriptor (SCM_RIGHTS). Descriptors arrive
no later than the bytes of their frame and in order, so the reader queues them and the
consumer of a fd-carrying message takes the next one.
"""

from __future__ import annotations

import array
import asyncio
import errno
import itertools
import logging
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from mirrord.protocol import (
    ClientHandshake,
    Codec,
    Error,
    Message,
    ProtocolError,
    RequestFailed,
    ServerHandshake,
)
from mirrord.protocol.codec import data_frame_header, encode
from mirrord.protocol.pump import PumpError
from mirrord.wire import pump
from mirrord.wire.carrier import Carrier

log = logging.getLogger("mirrord")
READ_SIZE = 256 * 1024
#: Descriptors one read may bring; more would be silently closed by the kernel.
MAX_FDS_PER_READ = 64
_FD_SPACE = socket.CMSG_SPACE(MAX_FDS_PER_READ * 4)
#: Kernel buffer asked for on each side of a link (the kernel may cap it).
SOCKET_BUFFER = 4 * 1024 * 1024
#: Control messages waiting for `receive()` before the link stops reading (back-pressure).
INBOX_LIMIT = 4096
#: Bytes buffered for the socket above which writers are asked to wait (or pause).
HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = 1024 * 1024
#: Buffers one sendmsg() takes (the kernel's IOV_MAX is 1024).
MAX_PARTS = 512


class Link:
    """Sends and receives whole messages over a connected stream socket (or a carrier)."""

    def __init__(self, stream: socket.socket | Carrier, accept_fds: bool = False) -> None:
        if isinstance(stream, socket.socket):
            sock, self._carrier = stream, None
        else:
            sock, self._carrier = stream.sock, stream
            stream.on_backlog = self._carrier_backlogged
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # a frame is one write, often small (Credit, a request): Nagle would hold it
            # for the peer's delayed ACK, ~40 ms (a cluster agent's link is TCP)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:  # room for whole frames: fewer partial writes, fewer wake-ups
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            except OSError:
                pass
        self.sock = sock
        self._fileno = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._codec = Codec()
        self._rbuf = bytearray(READ_SIZE)
        self._rview = memoryview(self._rbuf)
        self._fds: deque[int] = deque()
        self.can_pass_fds = sock.family == socket.AF_UNIX and self._carrier is None
        # only the intproxy takes descriptors (from its agent); anyone else's are closed
        self._accept_fds = accept_fds and self.can_pass_fds
        #: connection frames go here as they arrive (the Mux); True means "taken"
        self.frame_handler: Callable[[Message], bool] | None = None
        #: called with True when writes back up (the Mux pauses its readers), False after
        self.on_congestion: Callable[[bool], None] | None = None
        self._inbox: deque[Message] = deque()
        self._arrived = asyncio.Event()
        self._ended: BaseException | None = None  # EndOfStream, ProtocolError, OSError
        self._reading = False
        self._out: deque[tuple[list[memoryview], int | None]] = deque()
        self._out_bytes = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._congested = False
        self._closed = False
        self._writer_on = False  # waiting for the socket to take more
        self._batching = False  # a send of what this pass of the loop wrote is due
        #: the link's socket is a native pump's (wire/pump.py): the Mux hands it sockets
        self.pumped = False

    # -- reading ---------------------------------------------------------------------

    def _start_reading(self) -> None:
        if not self._reading and self._ended is None and not self._closed:
            self._loop.add_reader(self._fileno, self._on_readable)
            self._reading = True
            if self._carrier is not None and self._carrier.pending:
                self._loop.call_soon(self._read_pending)

    def _read_pending(self) -> None:
        if self._reading:
            self._on_readable()

    def _stop_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fileno)
            self._reading = False

    def _on_readable(self) -> None:
        try:
            chunk = self._read_socket() if self._carrier is None else self._carrier.read()
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, ProtocolError) as exc:
            self._end(exc)
            return
        if not chunk:
            self._end(anyio.EndOfStream())
            return
        self._codec.feed(chunk)
        try:
            while (msg := self._codec.next_message()) is not None:
                handler = self.frame_handler
                if handler is not None and handler(msg):
                    continue
                if self.pumped and type(msg) is PumpError:
                    raise ProtocolError(msg.message)  # what the pump found wrong
                self._inbox.append(msg)
                self._arrived.set()
        except ProtocolError as exc:
            self._end(exc)
            return
        if len(self._inbox) >= INBOX_LIMIT:
            self._stop_reading()  # receive() starts again once the backlog is worked off

    def _read_socket(self) -> memoryview:
        # into one buffer of ours: a fresh 256 KiB object per read would be an mmap and
        # munmap per message
        if not self._accept_fds:
            return self._rview[: self.sock.recv_into(self._rbuf)]
        size, ancillary, _flags, _addr = self.sock.recvmsg_into(
            [self._rbuf], _FD_SPACE, socket.MSG_CMSG_CLOEXEC
        )
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                self._fds.extend(array.array("i", payload[:usable]))
        if len(self._fds) > MAX_FDS_PER_READ:
            raise ProtocolError("the peer sent descriptors nobody asked for")
        return self._rview[:size]

    def _end(self, reason: BaseException) -> None:
        if self._ended is None:
            self._ended = reason
        self._stop_reading()
        self._arrived.set()

    async def receive(self) -> Message:
        """The next message that no frame handler took; anyio.EndOfStream when the peer
        is gone, ProtocolError when it broke the protocol."""
        while not self._inbox:
            if self._ended is not None:
                raise self._ended
            self._arrived.clear()
            self._start_reading()
            await self._arrived.wait()
        msg = self._inbox.popleft()
        if len(self._inbox) < INBOX_LIMIT // 2:
            self._start_reading()
        return msg

    def start(self) -> None:
        """Begin reading now (for a link whose frames a handler takes before anyone
        calls `receive()`)."""
        self._start_reading()

    def take_fd(self) -> int:
        """The descriptor that came with the message just received."""
        if not self._fds:
            raise ProtocolError("a message announced a descriptor that did not arrive")
        return self._fds.popleft()

    # -- writing ---------------------------------------------------------------------

    async def send(self, msg: Message, fd: int | None = None) -> None:
        """Send `msg` (and `fd` with it); waits while the socket is far behind."""
        self.send_nowait(msg, fd)
        await self.drain()

    def send_nowait(self, msg: Message, fd: int | None = None) -> None:
        self._write([memoryview(encode(msg))], fd)

    def send_data(self, conn: int, data: bytes | memoryview) -> None:
        """A Data frame, without copying `data` (the Mux's hot path)."""
        self._write([memoryview(data_frame_header(conn, len(data))), memoryview(data)], None)

    async def drain(self) -> None:
        while self._out_bytes > HIGH_WATER:
            if self._closed or isinstance(self._ended, OSError):
                break
            self._drained.clear()
            await self._drained.wait()
        self._check_writable()

    def _check_writable(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if isinstance(self._ended, OSError):
            raise anyio.BrokenResourceError from self._ended

    def _write(self, parts: list[memoryview], fd: int | None) -> None:
        self._check_writable()
        if fd is not None:
            if self._out and not self._writer_on:
                self._send_out()  # what was written before goes first
            if not self._out:
                self._write_now(parts, fd)
                return
            fd = os.dup(fd)  # the caller closes its descriptor when we return
        self._queue(parts, fd)
        if not self._writer_on and not self._batching:
            # the first frame of a pass goes at once (a lone request waits for nothing);
            # what else this pass writes gathers behind it and goes in one sendmsg: one
            # system call and one wake-up of the peer for many frames
            self._batching = True
            self._loop.call_soon(self._send_batch)
            if len(self._out) == 1:
                self._send_out()

    def _write_now(self, parts: list[memoryview], fd: int) -> None:
        """A frame with a descriptor goes at once: no copy of the descriptor to keep
        (a unix socket's: a carrier never takes descriptors)."""
        size = sum(len(p) for p in parts)
        try:
            sent = self._send(parts, fd)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fail_writes(exc)
            raise anyio.BrokenResourceError from exc
        if sent == size:
            return
        if sent:
            self._queue(_advance(parts, sent), None)  # the fd went with the first byte
        else:
            self._queue(parts, os.dup(fd))
        self._want_writable()

    def _queue(self, parts: list[memoryview], fd: int | None) -> None:
        self._out.append((parts, fd))
        self._out_bytes += sum(len(p) for p in parts)
        if self._out_bytes > HIGH_WATER and not self._congested:
            self._congested = True
            if self.on_congestion is not None:
                self.on_congestion(True)

    def _send_batch(self) -> None:
        self._batching = False
        if not self._writer_on and not self._closed and not isinstance(self._ended, OSError):
            self._send_out()

    def _send(self, parts: list[memoryview], fd: int | None) -> int:
        if self._carrier is not None:
            return self._carrier.send(parts)  # (no descriptors: can_pass_fds is False)
        if fd is None:
            return self.sock.sendmsg(parts)
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        return self.sock.sendmsg(parts, rights)

    def _want_writable(self) -> None:
        if not self._writer_on:
            self._loop.add_writer(self._fileno, self._on_writable)
            self._writer_on = True

    def _carrier_backlogged(self) -> None:
        """The carrier holds bytes the socket did not take: write them when it can."""
        if not self._closed and not isinstance(self._ended, OSError):
            self._want_writable()

    def _on_writable(self) -> None:
        if self._carrier is not None:
            try:
                if not self._carrier.flush():
                    return
            except OSError as exc:
                self._fail_writes(exc)
                return
        self._send_out()

    def _send_out(self) -> None:
        """Write what is queued, many frames per call, until the socket takes no more."""
        out = self._out
        while out:
            # frames up to the next one with a descriptor (which starts a call of its own)
            parts, fd = out[0]
            if len(out) > 1:
                parts = list(parts)
                for more, more_fd in itertools.islice(out, 1, None):
                    if more_fd is not None or len(parts) + len(more) > MAX_PARTS:
                        break
                    parts.extend(more)
            try:
                sent = self._send(parts, fd)
            except (BlockingIOError, InterruptedError):
                self._want_writable()
                return
            except OSError as exc:
                self._fail_writes(exc)
                return
            if fd is not None:
                os.close(fd)  # it went with the first byte
                out[0] = (out[0][0], None)
            self._out_bytes -= sent
            short = sent < sum(len(p) for p in parts)
            while sent:
                first = out[0][0]
                size = sum(len(p) for p in first)
                if sent < size:
                    out[0] = (_advance(first, sent), None)
                    break
                sent -= size
                out.popleft()
            if short:  # the socket is full: on when it is writable again
                self._want_writable()
                self._wake_writers()
                return
        self._out_bytes = 0
        if self._writer_on and (self._carrier is None or not self._carrier.backlogged):
            self._loop.remove_writer(self._fileno)
            self._writer_on = False
        self._wake_writers()

    def _wake_writers(self) -> None:
        if self._out_bytes <= LOW_WATER:
            self._drained.set()
            if self._congested:
                self._congested = False
                if self.on_congestion is not None:
                    self.on_congestion(False)

    def _fail_writes(self, exc: OSError) -> None:
        self._loop.remove_writer(self._fileno)
        self._writer_on = False
        for _, fd in self._out:
            if fd is not None:
                os.close(fd)
        self._out.clear()
        self._out_bytes = 0
        self._end(exc)
        self._drained.set()

    def with_pump(self) -> Link:
        """This link with its data plane in C (wire/pump.py), or itself where that cannot
        be: a carrier, no library, or bytes already read past the handshake. Call it right
        after the handshake, before anything else is sent or received. The pump passes
        descriptors to the peer, not from it: a link that takes them loses that."""
        if (
            self._carrier is not None
            or self._inbox
            or self._codec.buffered
            or self._fds
            or self._out
            or self._closed
            or self._ended is not None
        ):
            return self
        if not pump.available():
            return self
        self._stop_reading()
        replacement = pump.start(self.sock)  # (OSError: the link is gone with it)
        self._closed = True  # the socket is the pump's: nothing of ours closes it
        self._end(anyio.ClosedResourceError())
        link = Link(replacement, accept_fds=False)
        link.can_pass_fds = self.can_pass_fds and not self._accept_fds
        link.pumped = True
        return link

    # -- requests and the first exchange -------------------------------------------

    async def guarded(self, handler: Callable[[Any], Awaitable[None]], msg: Any, side: str) -> None:
        """Run one request's handler; if it fails, the peer gets a RequestFailed and the
        link's other requests go on."""
        try:
            await handler(msg)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the peer is gone
        except Exception as exc:
            log.exception("request %s failed", msg.TAG)
            await self.reply_failure(msg.req, errno.EIO, f"{side}: {exc}")

    async def reply_failure(self, req: int, code: int, text: str, kind: str = "os") -> None:
        """Best effort, bounded: the peer may be gone or stuck."""
        with anyio.move_on_after(1):
            try:
                await self.send(RequestFailed(req=req, kind=kind, errno=code, message=text))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass

    async def fail(self, exc: ProtocolError) -> None:
        """Tell the peer why it is being dropped, best effort."""
        with anyio.move_on_after(1):
            try:
                await self.send(Error(code=exc.code, message=str(exc)))
                await self.flush()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass

    async def flush(self) -> None:
        """Wait until everything written has reached the socket."""
        self._send_batch()
        while self._unsent() and not self._closed and not isinstance(self._ended, OSError):
            self._drained.clear()
            if self._out_bytes <= LOW_WATER:
                await anyio.sleep(0.001)
            else:
                await self._drained.wait()

    def _unsent(self) -> bool:
        return bool(self._out) or (self._carrier is not None and self._carrier.backlogged)

    async def accept_handshake(self, token: str) -> str:
        """Server side of the first exchange; returns the client's name."""
        handshake = ServerHandshake(token)
        try:
            await self.send(handshake.receive(await self.receive()))
        except ProtocolError as exc:
            await self.fail(exc)
            raise
        return handshake.client

    async def handshake(self, token: str, client: str) -> None:
        """Client side of the first exchange."""
        handshake = ClientHandshake(token, client)
        await self.send(handshake.hello)
        handshake.receive(await self.receive())

    async def aclose(self) -> None:
        if self._closed:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            await self.flush()  # a goodbye written just before must not be lost
        self._closed = True
        self._stop_reading()
        self._loop.remove_writer(self._fileno)
        self._writer_on = False
        for _, fd in self._out:
            if fd is not None:
                os.close(fd)
        self._out.clear()
        while self._fds:
            os.close(self._fds.popleft())
        if self._carrier is not None:
            self._carrier.close()
        else:
            self.sock.close()
        self._end(anyio.ClosedResourceError())
        self._drained.set()


def _advance(parts: list[memoryview], sent: int) -> list[memoryview]:
    """What is left of `parts` after `sent` bytes went out."""
    left = []
    for part in parts:
        if sent >= len(part):
            sent -= len(part)
            continue
        left.append(part[sent:])
        sent = 0
    return left
