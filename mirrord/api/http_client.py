"""HTTP from the target: an httpx client whose connections are made by the target.

Only the TCP connection crosses into the target (names resolve there too, through
`TargetIO.connect`); httpx does the HTTP and httpcore the pooling and TLS here, so a
response is a plain `httpx.Response` and nothing in this process is patched.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

Connector = Callable[[tuple[str, int], float | None], socket.socket]
#: httpx's own defaults for a client's pool
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


@contextmanager
def _mapped(timeout: type[Exception], error: type[Exception]) -> Iterator[None]:
    try:
        yield
    except TimeoutError as exc:
        raise timeout(str(exc)) from exc
    except OSError as exc:
        raise error(str(exc)) from exc


class _TargetStream(httpcore.NetworkStream):
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _mapped(httpcore.ReadTimeout, httpcore.ReadError):
            self._sock.settimeout(timeout)
            return self._sock.recv(max_bytes)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        with _mapped(httpcore.WriteTimeout, httpcore.WriteError):
            self._sock.settimeout(timeout)
            self._sock.sendall(buffer)

    def close(self) -> None:
        self._sock.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        with _mapped(httpcore.ConnectTimeout, httpcore.ConnectError):
            self._sock.settimeout(timeout)
            return _TargetStream(
                ssl_context.wrap_socket(self._sock, server_hostname=server_hostname)
            )

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._sock if isinstance(self._sock, ssl.SSLSocket) else None
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "socket":
            return self._sock
        if info == "is_readable":
            # an idle pooled connection that is readable was closed by the server
            return bool(select.select([self._sock], [], [], 0)[0])
        return None


class _FromTarget(httpcore.NetworkBackend):
    def __init__(self, connect: Connector) -> None:
        self._connect = connect

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        with _mapped(httpcore.ConnectTimeout, httpcore.ConnectError):
            return _TargetStream(self._connect((host, port), timeout))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are local: the target has none to offer")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class TargetTransport(httpx.BaseTransport):
    """An httpx transport whose connections leave from the target."""

    def __init__(
        self,
        connect: Connector,
        verify: ssl.SSLContext | str | bool = True,
        limits: httpx.Limits = DEFAULT_LIMITS,
    ) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=_ssl_context(verify),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_FromTarget(connect),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        with _as_httpx(request):
            response = self._pool.handle_request(
                httpcore.Request(
                    method=request.method,
                    url=httpcore.URL(
                        scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
                    ),
                    headers=request.headers.raw,
                    content=request.stream,
                    extensions=request.extensions,
                )
            )
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response, request),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


class _Body(httpx.SyncByteStream):
    def __init__(self, response: httpcore.Response, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx(self._request):
            yield from self._response.iter_stream()

    def close(self) -> None:
        self._response.close()


@contextmanager
def _as_httpx(request: httpx.Request) -> Iterator[None]:
    """httpcore's errors as httpx's classes of the same names, as httpx itself does."""
    try:
        yield
    except Exception as exc:
        if type(exc).__module__.split(".")[0] != "httpcore":
            raise
        kind = getattr(httpx, type(exc).__name__, httpx.TransportError)
        raise kind(str(exc), request=request) from exc


def _ssl_context(verify: ssl.SSLContext | str | bool) -> ssl.SSLContext:
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)


def target_client(connect: Connector, **options: Any) -> httpx.Client:
    """An httpx.Client from the target; `verify` and `limits` as httpx takes them (they
    shape the transport, which httpx leaves to us), the rest goes to httpx.Client."""
    transport = TargetTransport(
        connect, options.pop("verify", True), options.pop("limits", DEFAULT_LIMITS)
    )
    return httpx.Client(transport=transport, **options)
