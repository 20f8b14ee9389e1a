"""A Kubernetes port-forward on the intproxy's own event loop: the API server's
websocket (``v4.channel.k8s.io``), read and written by the Link's readiness callbacks.

The official client's port-forward runs a thread that copies between the websocket and a
socket pair; every byte of a cluster session crossed that thread and that pair, and each
message woke the thread and then the loop. Here the loop reads the TLS socket itself:
TLS through memory BIOs, websocket frames through the ``websockets`` sans-I/O client
(its masking is C), the port's data channel handed to the Link as a byte stream.

The stream of one port: channel 0 carries its bytes, channel 1 the errors the kubelet
reports (a refused connection in the pod); each channel's first two bytes are the port
number, little-endian. The client sends its bytes on channel 0, one message per write.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from mirrord.kube.errors import describe_api_error
from mirrord.wire.connect import connect

SUBPROTOCOL = Subprotocol("v4.channel.k8s.io")
READ_SIZE = 256 * 1024
_DATA, _ERROR = 0, 1


class PortForwardRefused(Exception):
    """The API server answered the upgrade with an HTTP error (``describe_api_error``
    reads its status and body)."""

    def __init__(self, status: int, reason: str, body: bytes) -> None:
        super().__init__(f"({status}) {reason}")
        self.status, self.reason, self.body = status, reason, body


class _Tls:
    """TLS over memory BIOs: the socket stays ours and non-blocking."""

    def __init__(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = context.wrap_bio(self._in, self._out, server_hostname=server_hostname)

    def handshake_step(self, received: bytes) -> tuple[bool, bytes]:
        """Feed what arrived; (done, what to send)."""
        if received:
            self._in.write(received)
        try:
            self.obj.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        return done, self._out.read()

    def decrypt(self, data: bytes) -> bytes:
        self._in.write(data)
        pieces = []
        while True:
            try:
                piece = self.obj.read(READ_SIZE)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not piece:
                break
            pieces.append(piece)
        return b"".join(pieces)

    def encrypt(self, data: bytes) -> bytes:
        if data:
            self.obj.write(data)
        return self._out.read()  # also records the reading side produced (TLS 1.3 tickets)


class _Plain:
    """An ``http://`` API server (a local proxy such as ``kubectl proxy``)."""

    def handshake_step(self, received: bytes) -> tuple[bool, bytes]:
        return True, b""

    def decrypt(self, data: bytes) -> bytes:
        return data

    def encrypt(self, data: bytes) -> bytes:
        return data


class PortForwardCarrier:
    """One forwarded port as a Link's carrier (``mirrord.wire.carrier``)."""

    def __init__(self, sock: socket.socket, tls: _Tls | _Plain, ws: ClientProtocol, port: int):
        self.sock = sock
        self.on_backlog: Callable[[], None] | None = None
        self._tls, self._ws, self._port = tls, ws, port
        #: what the kubelet said on the error channel (why the forward ended)
        self.error = ""
        self._backlog = bytearray()
        self._header_left = {_DATA: 2, _ERROR: 2}
        self._header = {_DATA: bytearray(), _ERROR: bytearray()}
        self._channel: int | None = None  # of the message whose fragments are arriving
        self._ended = False
        #: data channel bytes that arrived with the upgrade's answer
        self.early: bytes = b""

    # -- reading ---------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        return bool(self.early)

    def read(self) -> bytes | memoryview:
        if self._ended:
            return b""
        if self.early:
            early, self.early = self.early, b""
            return early
        data = self.sock.recv(READ_SIZE)
        if not data:
            self._ended = True
            return b""
        self._ws.receive_data(self._tls.decrypt(data))
        events = self._ws.events_received()
        out = [self.take(e) for e in events if isinstance(e, Frame)]
        if self._ws.parser_exc is not None:
            raise ConnectionError(f"the port-forward's websocket broke: {self._ws.parser_exc}")
        self._queue(self._ws.data_to_send())  # a pong, our answer to a close
        if self._backlog and not self.flush() and self.on_backlog is not None:
            self.on_backlog()
        if self._ws.state is State.CLOSED or self._ws.close_expected():
            self._ended = True  # the server said goodbye: what came with it is the last
        chunk = b"".join(out)
        if not chunk and not self._ended:
            raise BlockingIOError
        return chunk

    def take(self, frame: Frame) -> bytes | memoryview:
        """The data channel's bytes of `frame` (b"" for anything else)."""
        if frame.opcode is Opcode.BINARY:
            if not frame.data:
                raise ConnectionError("the port-forward sent a message without a channel")
            channel, payload = frame.data[0], memoryview(frame.data)[1:]
        elif frame.opcode is Opcode.CONT and self._channel is not None:
            channel, payload = self._channel, memoryview(frame.data)
        elif frame.opcode in (Opcode.PING, Opcode.PONG, Opcode.CLOSE):
            return b""  # the protocol object answers pings and closes
        else:
            raise ConnectionError(f"the port-forward sent an unexpected {frame.opcode.name} frame")
        self._channel = None if frame.fin else channel
        if channel not in self._header_left:
            raise ConnectionError(f"the port-forward sent data on channel {channel}")
        if self._header_left[channel]:
            head = payload[: self._header_left[channel]]
            self._header[channel] += head
            self._header_left[channel] -= len(head)
            payload = payload[len(head) :]
            if not self._header_left[channel]:
                port = int.from_bytes(self._header[channel], "little")
                if port != self._port:
                    raise ConnectionError(f"the port-forward is for port {port}, not {self._port}")
        if channel == _ERROR:
            self.error += bytes(payload).decode(errors="replace")
            return b""
        return payload

    # -- writing ---------------------------------------------------------------------

    def send(self, parts: list[memoryview]) -> int:
        if self._backlog:
            raise BlockingIOError
        if self._ws.state is not State.OPEN:
            raise BrokenPipeError("the port-forward's websocket is closed")
        message = b"".join([b"\x00", *parts])
        self._ws.send_binary(message)
        self._queue(self._ws.data_to_send())
        self.flush()
        return len(message) - 1

    def _queue(self, frames: list[bytes]) -> None:
        for frame in frames:
            if frame:  # (b"" is the protocol's "half-close now", which a forward never does)
                self._backlog += self._tls.encrypt(frame)

    @property
    def backlogged(self) -> bool:
        return bool(self._backlog)

    def flush(self) -> bool:
        while self._backlog:
            try:
                sent = self.sock.send(self._backlog)
            except (BlockingIOError, InterruptedError):
                return False
            del self._backlog[:sent]
        return True

    def close(self) -> None:
        """Say goodbye if the socket takes it at once, then close."""
        try:
            if self._ws.state is State.OPEN:
                self._ws.send_close()
                self._queue(self._ws.data_to_send())
            self.flush()
        except OSError:
            pass
        self.sock.close()


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy that tunnels to the API server (``CONNECT``)."""

    host: str
    port: int
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ForwardTarget:
    """Where the upgrade goes and how to authenticate, from the client's configuration."""

    host: str
    port: int
    url: str
    tls: ssl.SSLContext | None
    server_hostname: str | None
    authorization: str | None
    proxy: Proxy | None = None


def _bypasses_proxy(url: str, no_proxy: str) -> bool:
    try:  # the rule the client applies to its own calls (CIDRs too), where it has one
        from kubernetes.client.rest import should_bypass_proxies
    except ImportError:
        host = urlsplit(url).hostname or ""
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        return bool(bypass(host, {"no": no_proxy}))
    return bool(should_bypass_proxies(url, no_proxy))


def proxy_of(configuration: Any) -> Proxy | None:
    """The proxy the client would use for the API server (``proxy-url`` in the
    kubeconfig, else ``HTTPS_PROXY``), unless ``no_proxy`` exempts it."""
    url = getattr(configuration, "proxy", None)
    if not url or _bypasses_proxy(configuration.host, getattr(configuration, "no_proxy", "") or ""):
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http":
        raise ValueError(f"proxy {url}: only http:// proxies can tunnel the port-forward")
    headers = dict(getattr(configuration, "proxy_headers", None) or {})
    if parts.username and not any(k.lower() == "proxy-authorization" for k in headers):
        user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
    return Proxy(parts.hostname or "localhost", parts.port or 80, tuple(headers.items()))


def target_of(configuration: Any, namespace: str, pod: str, port: int) -> ForwardTarget:
    """From a ``kubernetes.client.Configuration``."""
    parts = urlsplit(configuration.host)
    secure = parts.scheme == "https"
    host = parts.hostname or "localhost"
    path = f"{parts.path.rstrip('/')}/api/v1/namespaces/{namespace}/pods/{pod}/portforward"
    url = f"{'wss' if secure else 'ws'}://{parts.netloc}{path}?ports={port}"
    context = None
    if secure:
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
        if not configuration.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif configuration.assert_hostname is False:
            context.check_hostname = False
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
    bearer = configuration.auth_settings().get("BearerToken") or {}
    return ForwardTarget(
        host=host,
        port=parts.port or (443 if secure else 80),
        url=url,
        tls=context,
        server_hostname=(configuration.tls_server_name or host) if secure else None,
        authorization=bearer.get("value"),
        proxy=proxy_of(configuration),
    )


async def open_port_forward(target: ForwardTarget, port: int, doing: str) -> PortForwardCarrier:
    """Connect, upgrade and return the carrier; failures as ``KubeError`` (``doing``
    names the action for the message)."""
    loop = asyncio.get_running_loop()
    first = target.proxy or target
    infos = await loop.getaddrinfo(first.host, first.port, type=socket.SOCK_STREAM)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        await connect(sock, address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        received = b""
        if target.proxy is not None:
            received = await _tunnel(sock, target.proxy, target.host, target.port)
        tls: _Tls | _Plain = (
            _Tls(target.tls, target.server_hostname) if target.tls is not None else _Plain()
        )
        done, out = tls.handshake_step(received)
        while True:
            if out:
                await loop.sock_sendall(sock, out)
            if done:
                break
            received = await loop.sock_recv(sock, 65536)
            if not received:
                raise ConnectionError("the API server closed the connection during TLS")
            done, out = tls.handshake_step(received)
        ws = ClientProtocol(parse_uri(target.url), subprotocols=[SUBPROTOCOL], max_size=None)
        request = ws.connect()
        if target.authorization:
            request.headers["Authorization"] = target.authorization
        ws.send_request(request)
        await loop.sock_sendall(sock, b"".join(tls.encrypt(d) for d in ws.data_to_send()))
        response = None
        while response is None:
            received = await loop.sock_recv(sock, 65536)
            if received:
                ws.receive_data(tls.decrypt(received))
            else:
                ws.receive_eof()  # (the end of an answer's body without a length)
            events = ws.events_received()
            response = next((e for e in events if isinstance(e, Response)), None)
            if response is None and not received:
                raise ConnectionError("the API server closed the connection before answering")
        if response.status_code != 101:
            body = bytes(response.body or b"")
            raise PortForwardRefused(response.status_code, response.reason_phrase, body)
        if ws.handshake_exc is not None:
            raise ConnectionError(f"the port-forward's upgrade failed: {ws.handshake_exc}")
        if ws.subprotocol != SUBPROTOCOL:
            raise ConnectionError(f"the API server does not speak {SUBPROTOCOL} port-forwards")
        carrier = PortForwardCarrier(sock, tls, ws, port)
        # frames that came with the answer: the ports' headers, and data if the peer
        # spoke first (the Link reads it as soon as it starts reading)
        carrier.early = b"".join(carrier.take(e) for e in events if isinstance(e, Frame))
        return carrier
    except (OSError, PortForwardRefused) as exc:
        sock.close()
        raise describe_api_error(exc, doing) from None
    except BaseException:
        sock.close()
        raise


async def _tunnel(sock: socket.socket, proxy: Proxy, host: str, port: int) -> bytes:
    """Ask `proxy` for a tunnel to host:port; what came after its answer."""
    loop = asyncio.get_running_loop()
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {where} HTTP/1.1", f"Host: {where}"]
    lines += [f"{name}: {value}" for name, value in proxy.headers]
    await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        received = await loop.sock_recv(sock, 4096)
        if not received or len(answer) > 65536:
            raise ConnectionError(f"the proxy {proxy.host}:{proxy.port} gave no tunnel")
        answer += received
    head, _, rest = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[1].startswith("2"):
        raise ConnectionError(
            f"the proxy {proxy.host}:{proxy.port} refused a tunnel to {where}: {status_line}"
        )
    return rest
