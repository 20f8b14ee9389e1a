"""Filtered steal: serve one stolen HTTP/1.x client connection request by request.

Each request on the (kept-alive) client connection is routed on its own by ``choose``: to a fresh
connection to the developer's app, or (None) to the original service over one upstream
connection kept alive across requests. Requests are handled strictly one at a time, so
responses reach the client in order; a pipelining client just waits.

h11 is used only as a parser, to learn where each message starts and ends: the bytes forwarded
are the bytes received (request and response heads, chunk framing and trailers included),
never re-serialised. Whatever h11 cannot follow (not HTTP/1.x, an accepted Upgrade or CONNECT,
a protocol error) is relayed raw, both ways, from that point on, to where the current request
was going (the original service if no request was read yet): no byte of the client is dropped.

Memory per connection is bounded: reads are at most ``CHUNK`` bytes, and a read is made only
when the parser needs more data to make progress.
"""

from __future__ import annotations

import contextlib
import enum
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import h11

from mirrord.http.head import RequestHead, buffered_bytes, raw_headers

if TYPE_CHECKING:
    from h11._util import Sentinel  # the type of h11.NEED_DATA, h11.CLIENT, ...

__all__ = ["RequestHead", "serve_stolen_http"]

CHUNK = 65536
#: Largest request or response head we parse (h11's default of 16 KiB is small for cookies).
MAX_HEAD = 65536
#: A client that sends nothing for this long may be waiting for a server-first protocol: relay.
FIRST_BYTES_TIMEOUT = 10.0
#: How long to keep reading (and discarding) after we decided to close, so that the kernel does
#: not answer the client's unread bytes with a reset that would destroy our last response.
LINGER_TIMEOUT = 2.0

_IO_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)

# The first line of an HTTP/1.x request, and the prefixes of one (to decide early: a TLS or
# HTTP/2 client would otherwise wait forever for a blank line h11 needs).
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_REQUEST_LINE = re.compile(_TOKEN + rb"+ [^\x00-\x20\x7f]+ HTTP/1\.[0-9]\r?\n")
_REQUEST_LINE_PREFIX = re.compile(
    _TOKEN + rb"*(?: [^\x00-\x20\x7f]*(?: (?:H(?:T(?:T(?:P(?:/(?:1(?:\.[0-9]?)?)?)?)?)?)?)?)?)?"
)


def _sniff(buffer: bytes | bytearray) -> bool | None:
    """Whether `buffer` starts an HTTP/1.x request: True, False, or None (can't tell yet)."""
    end = buffer.find(b"\n")
    if end >= 0:
        return _REQUEST_LINE.fullmatch(buffer, 0, end + 1) is not None
    line = bytes(buffer[:-1]) if buffer.endswith(b"\r") else bytes(buffer)
    return None if _REQUEST_LINE_PREFIX.fullmatch(line) else False


def _keep_alive(event: h11.Request | h11.Response) -> bool:
    tokens = b",".join(v for n, v in event.headers if n == b"connection").lower()
    if b"close" in [t.strip() for t in tokens.split(b",")]:
        return False
    return event.http_version >= b"1.1"


class _PeerFailed(Exception):
    """Reading from or writing to a peer failed (reset, broken, closed)."""

    def __init__(self, peer: _Peer, cause: BaseException) -> None:
        super().__init__(f"{peer.name}: {cause!r}")
        self.peer = peer


class _NotHttp(Exception):
    """The client's bytes are not (or no longer) HTTP/1.x we can follow."""


class _Peer:
    """A byte stream with an h11 parser in front of it.

    `unconsumed` holds every received byte that has not yet been handed out as part of an event
    (h11 keeps the same bytes in its own buffer). It is what a raw relay must still forward when
    h11 gives up, including the bytes of a head h11 failed to parse.
    """

    def __init__(self, stream: anyio.abc.ByteStream, role: type[Sentinel], name: str) -> None:
        self.stream = stream
        self.role = role
        self.name = name
        self.conn = h11.Connection(role, max_incomplete_event_size=MAX_HEAD)
        self.unconsumed = bytearray()
        self.eof = False

    def new_cycle(self, strip_blank_lines: bool = False) -> None:
        """A fresh parser for the next message, fed with what is already buffered.

        A fresh parser rather than h11's start_next_cycle: we never tell h11 what we forwarded
        the other way, and a fresh one lets us skip the blank lines that RFC 9112 says a server
        should ignore before a request (h11 rejects them).
        """
        if strip_blank_lines:
            kept = self.unconsumed.lstrip(b"\r\n")
            self.unconsumed = bytearray(kept)
        self.conn = h11.Connection(self.role, max_incomplete_event_size=MAX_HEAD)
        if self.unconsumed:
            self.conn.receive_data(bytes(self.unconsumed))
        if self.eof:
            self.conn.receive_data(b"")

    def poll(self) -> tuple[h11.Event | type[Sentinel], bytes]:
        """One h11 event (or NEED_DATA/PAUSED) and the raw bytes h11 consumed for it."""
        event = self.conn.next_event()  # on error, `unconsumed` still holds every unsent byte
        consumed = len(self.unconsumed) - buffered_bytes(self.conn)
        raw = bytes(self.unconsumed[:consumed])
        del self.unconsumed[:consumed]
        return event, raw

    async def fill(self) -> None:
        """Read once from the stream into the parser."""
        try:
            data = await self.stream.receive(CHUNK)
        except anyio.EndOfStream:
            self.eof = True
            self.conn.receive_data(b"")
            return
        except _IO_ERRORS as exc:
            raise _PeerFailed(self, exc) from exc
        self.unconsumed += data
        self.conn.receive_data(data)

    async def next_event(self) -> tuple[h11.Event | type[Sentinel], bytes]:
        """The next event (never NEED_DATA) and the raw bytes consumed up to and including it."""
        before = bytearray()
        try:
            while True:
                event, raw = self.poll()
                before += raw
                if event is not h11.NEED_DATA:
                    return event, bytes(before)
                await self.fill()
        except h11.RemoteProtocolError:
            self.unconsumed[0:0] = before  # keep them for the raw relay
            raise

    async def send(self, data: bytes | bytearray) -> None:
        try:
            await self.stream.send(bytes(data))
        except _IO_ERRORS as exc:
            raise _PeerFailed(self, exc) from exc


def _looks_closed(stream: anyio.abc.ByteStream) -> bool:
    """Whether an idle kept-alive upstream was closed (or sent something unsolicited)."""
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
    if sock is None:
        return False
    # asyncio hands out a TransportSocket without recv(): peek through a borrowed object
    probe = socket.socket(fileno=sock.fileno())
    try:
        probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False  # nothing to read: still open
    except OSError:
        return True
    finally:
        probe.detach()
    return True  # EOF, or bytes nobody asked for: not reusable either way


def _mirror_request(event: h11.Request) -> h11.Request:
    """The request as the upstream parser must believe we sent it.

    Only so that it parses the response right (HEAD, CONNECT, Upgrade, keep-alive): the body
    framing is dropped (we forward the body raw, h11 need not count it) and HTTP/1.0 becomes
    1.1 with `Connection: close` (h11 only "sends" 1.1, and does no 1.0 keep-alive).
    """
    headers = [
        (n, v)
        for n, v in raw_headers(event)
        if n.lower() not in (b"content-length", b"transfer-encoding")
    ]
    if event.http_version != b"1.1":
        if not any(n.lower() == b"host" for n, _ in headers):
            headers.append((b"host", b"mirrord"))
        headers.append((b"connection", b"close"))
    return h11.Request(method=event.method, target=event.target, headers=headers)


class _Outcome(enum.Enum):
    DONE = "done"
    RAW = "raw"
    TARGET_FAILED = "target failed"
    CLIENT_GONE = "client gone"


@dataclass
class _Exchange:
    """One request/response in flight between the client and a target."""

    target: _Peer
    head: RequestHead
    scope: anyio.CancelScope
    outcome: _Outcome | None = None
    error: str = ""
    request_done: bool = False
    response_started: bool = False
    got_100: bool = False

    def stop(self, outcome: _Outcome, error: str = "") -> None:
        if self.outcome is None:  # the first reason wins
            self.outcome, self.error = outcome, error
        self.scope.cancel()


class _Handler:
    def __init__(
        self,
        client: anyio.abc.ByteStream,
        choose: Callable[[RequestHead], Awaitable[anyio.abc.ByteStream | None]],
        open_original: Callable[[], Awaitable[anyio.abc.ByteStream]],
        first_bytes_timeout: float,
    ) -> None:
        self.client = _Peer(client, h11.SERVER, "client")
        self.choose = choose
        self.open_original = open_original
        self.first_bytes_timeout = first_bytes_timeout
        self.original: _Peer | None = None
        self.local: _Peer | None = None

    async def run(self) -> None:
        first = True
        while True:
            if not first:
                self.client.new_cycle(strip_blank_lines=True)
            try:
                got = await self._read_request_head(first)
            except _NotHttp:
                await self._relay_to_original()
                return
            except _PeerFailed:
                return
            first = False
            if got is None:
                return  # the client closed between requests
            event, raw_head = got
            keep_going = await self._serve(event, raw_head)
            if not keep_going:
                return

    async def _read_request_head(self, first: bool) -> tuple[h11.Request, bytes] | None:
        client = self.client
        before = bytearray()
        while True:
            try:
                event, raw = client.poll()
            except h11.RemoteProtocolError:
                client.unconsumed[0:0] = before
                raise _NotHttp from None
            before += raw
            if isinstance(event, h11.Request):
                return event, bytes(before)
            if isinstance(event, h11.ConnectionClosed):
                return None
            if event is not h11.NEED_DATA:
                raise _NotHttp  # cannot happen on a fresh parser; be safe, relay
            if client.unconsumed and _sniff(client.unconsumed) is False:
                client.unconsumed[0:0] = before
                raise _NotHttp
            if first and not client.unconsumed:
                with anyio.move_on_after(self.first_bytes_timeout) as waited:
                    await client.fill()
                if waited.cancelled_caught:
                    raise _NotHttp  # server-first protocol, or an idle client: not ours to judge
            else:
                await client.fill()

    async def _target_for(self, head: RequestHead) -> _Peer:
        """The stream this request goes to; raises OSError when it cannot be had."""
        stream = await self.choose(head)
        if stream is not None:
            self.local = _Peer(stream, h11.CLIENT, "local app")
            return self.local
        original = self.original
        if original is not None and (
            original.eof
            or original.unconsumed
            or original.conn.our_state is not h11.DONE
            or original.conn.their_state is not h11.DONE
            or _looks_closed(original.stream)
        ):
            await _close(original.stream)
            self.original = original = None
        if original is None:
            original = self.original = _Peer(await self.open_original(), h11.CLIENT, "original")
        else:
            original.new_cycle()
        return original

    async def _serve(self, event: h11.Request, raw_head: bytes) -> bool:
        """Forward one request and its response; whether to read another from the client."""
        head = RequestHead.from_h11(event)
        try:
            target = await self._target_for(head)
        except OSError as exc:
            await self._bad_gateway(head, f"cannot connect: {exc}")
            return False
        try:
            target.conn.send(_mirror_request(event))
            target.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            # our parser cannot follow this request: relay the connection as it is
            await self._relay(target, raw_head)
            return False
        try:
            await target.send(raw_head)
        except _PeerFailed as exc:
            await self._bad_gateway(head, str(exc))
            return False

        with anyio.CancelScope() as scope:
            exchange = _Exchange(target, head, scope)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump_request, exchange)
                await self._pump_response(exchange)
                if exchange.outcome is None and not exchange.request_done:
                    self._after_early_response(exchange)
        outcome = exchange.outcome or _Outcome.DONE

        if outcome is _Outcome.RAW:
            await self._relay(target, b"")
            return False
        if self.local is not None:
            await _close(self.local.stream)
            self.local = None
        if outcome is _Outcome.CLIENT_GONE:
            return False
        if outcome is _Outcome.TARGET_FAILED:
            if exchange.response_started:
                return False  # the client saw part of a response: only closing tells it
            await self._bad_gateway(head, exchange.error)
            return False
        if (
            not exchange.request_done
            or self.client.eof
            or not _keep_alive(event)
            or target.conn.their_state is not h11.DONE
        ):
            await self._linger_close()
            return False
        return True

    @staticmethod
    def _after_early_response(ex: _Exchange) -> None:
        """The final response came before the request body was all read.

        If the target goes on reading, so do we (the client must send the body it announced);
        if it closes, or the client may be waiting for a 100 it will not get, stop here.
        """
        expects_100 = (ex.head.header("expect") or "").lower() == "100-continue"
        if ex.target.conn.their_state is not h11.DONE or (expects_100 and not ex.got_100):
            ex.stop(_Outcome.DONE)

    async def _pump_request(self, ex: _Exchange) -> None:
        """Client → target: the body of the current request, as raw bytes."""
        client, target = self.client, ex.target
        try:
            while True:
                event, raw = await client.next_event()
                if raw:
                    await target.send(raw)
                if isinstance(event, h11.EndOfMessage):
                    ex.request_done = True
                    return
                if not isinstance(event, h11.Data):
                    raise _NotHttp
        except (h11.RemoteProtocolError, _NotHttp):
            ex.stop(_Outcome.RAW)
        except _PeerFailed as exc:
            if exc.peer is client:
                ex.stop(_Outcome.CLIENT_GONE)
            # The target stopped reading: it may have answered early (413 and close). Its
            # response, or its failure, is for the response pump to see; the body is cut.

    async def _pump_response(self, ex: _Exchange) -> None:
        """Target → client: 1xx responses, then one final response, as raw bytes."""
        client, target = self.client, ex.target
        try:
            while True:
                try:
                    event, raw = await target.next_event()
                except h11.RemoteProtocolError as exc:
                    if target.eof:  # closed (or reset) before the response was complete
                        ex.stop(_Outcome.TARGET_FAILED, f"{target.name} closed: {exc}")
                    else:
                        ex.stop(_Outcome.RAW)
                    return
                if raw:
                    ex.response_started = True
                    await client.send(raw)
                if target.conn.our_state is h11.SWITCHED_PROTOCOL:
                    ex.stop(_Outcome.RAW)  # 101 to an Upgrade, 2xx to a CONNECT
                    return
                if isinstance(event, h11.InformationalResponse) and event.status_code == 100:
                    ex.got_100 = True
                if isinstance(event, h11.EndOfMessage):
                    return
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    ex.stop(_Outcome.TARGET_FAILED, f"{target.name}: unexpected {event!r}")
                    return
        except _PeerFailed as exc:
            ex.stop(
                _Outcome.CLIENT_GONE if exc.peer is client else _Outcome.TARGET_FAILED, str(exc)
            )

    async def _bad_gateway(self, head: RequestHead, reason: str) -> None:
        body = f"mirrord: {reason}\n".encode("utf-8", "replace")
        response = (
            b"HTTP/1.1 502 Bad Gateway\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\n"
            b"connection: close\r\n\r\n" % len(body)
        )
        with contextlib.suppress(_PeerFailed):
            await self.client.send(response if head.method == "HEAD" else response + body)
        await self._linger_close()

    async def _linger_close(self) -> None:
        """Half-close to the client and discard what it still sends, for a little while.

        Closing a socket with unread bytes makes the kernel send a reset, and the client may
        then lose the response it has not read yet.
        """
        client = self.client
        if client.eof:
            return
        with contextlib.suppress(*_IO_ERRORS):
            await client.stream.send_eof()
        with anyio.move_on_after(LINGER_TIMEOUT):
            with contextlib.suppress(*_IO_ERRORS, anyio.EndOfStream):
                while await client.stream.receive(CHUNK):
                    pass

    async def _relay_to_original(self) -> None:
        if self.original is not None:  # a kept-alive one: it is between messages, let it go
            await _close(self.original.stream)
            self.original = None
        try:
            stream = await self.open_original()
        except OSError:
            return
        self.original = _Peer(stream, h11.CLIENT, "original")
        await self._relay(self.original, b"")

    async def _relay(self, target: _Peer, first: bytes) -> None:
        """Relay the rest of the connection raw, both ways, starting with what is buffered."""
        client = self.client
        try:
            if first or client.unconsumed:
                await target.send(first + bytes(client.unconsumed))
                client.unconsumed.clear()
            if target.unconsumed:
                await client.send(target.unconsumed)
                target.unconsumed.clear()
        except _PeerFailed:
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(_copy, client, target, tg.cancel_scope)
            tg.start_soon(_copy, target, client, tg.cancel_scope)

    async def aclose(self) -> None:
        for peer in (self.local, self.original, self.client):
            if peer is not None:
                await _close(peer.stream)


async def _copy(src: _Peer, dst: _Peer, scope: anyio.CancelScope) -> None:
    """src → dst until src's EOF (passed on as a half-close); an error ends both directions."""
    try:
        if not src.eof:
            while True:
                try:
                    data = await src.stream.receive(CHUNK)
                except anyio.EndOfStream:
                    break
                await dst.stream.send(data)
        with contextlib.suppress(*_IO_ERRORS):
            await dst.stream.send_eof()
    except _IO_ERRORS:
        scope.cancel()


async def _close(stream: anyio.abc.ByteStream) -> None:
    with anyio.CancelScope(shield=True), contextlib.suppress(*_IO_ERRORS):
        await stream.aclose()


async def serve_stolen_http(
    client: anyio.abc.ByteStream,
    choose: Callable[[RequestHead], Awaitable[anyio.abc.ByteStream | None]],
    open_original: Callable[[], Awaitable[anyio.abc.ByteStream]],
    *,
    first_bytes_timeout: float = FIRST_BYTES_TIMEOUT,
) -> None:
    """Serve one stolen client connection until it ends, then close every stream involved.

    `choose(head)` returns a new stream to the developer's app for a request it takes (this
    function closes it after the response), or None to send the request to the original service.
    `open_original()` connects to the original service; its connection is reused while it stays
    alive. OSError from either is answered with `502 Bad Gateway`. A client that sends nothing for
    `first_bytes_timeout` seconds is relayed raw to the original service.
    """
    handler = _Handler(client, choose, open_original, first_bytes_timeout)
    try:
        await handler.run()
    finally:
        await handler.aclose()
