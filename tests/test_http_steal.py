"""The filtered steal engine, seen from a real HTTP client over loopback.

An "original" service and a developer's "local app" are real HTTP servers; a stealer listens on
127.0.0.1:0 and runs serve_stolen_http per accepted connection, sending the requests that carry
`x-mirrord-user: me` to the local app and the others to the original.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import http.client
import importlib.util
import json
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import pytest
import requests

from mirrord.agent.http_steal import SocketDestination, serve_stolen_http
from mirrord.agent.outgoing import connect_socket
from mirrord.http.filter import HttpFilter
from mirrord.http.head import RequestHead

pytestmark = pytest.mark.timeout(30)

ME = {"x-mirrord-user": "me"}


# --- the two HTTP servers ---------------------------------------------------------------------


class _EchoHandler(BaseHTTPRequestHandler):
    """Answers who it is, and what it got (method, path, body length and digest)."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.opened()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.closed()

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _answer(self) -> None:
        body = self._read_body()
        payload = json.dumps(
            {
                "who": self.server.name,
                "method": self.command,
                "path": self.path,
                "len": len(body),
                "sha": hashlib.sha256(body).hexdigest(),
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if self.path.startswith("/chunked"):
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i in range(0, len(payload), 7):
                piece = payload[i : i + 7]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("content-length", str(len(payload)))
        if self.path.startswith("/close"):
            self.send_header("connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_HEAD = _answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.name = name
        self.accepted = 0
        self.open = 0
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def opened(self) -> None:
        with self._lock:
            self.accepted += 1
            self.open += 1

    def closed(self) -> None:
        with self._lock:
            self.open -= 1


@contextmanager
def http_server(name: str) -> Iterator[_Server]:
    server = _Server(name)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def raw_server(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP server running `handle(conn)` per connection; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(10)
            threading.Thread(target=_run_and_close, args=(handle, conn), daemon=True).start()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


def _run_and_close(handle: Callable[[socket.socket], None], conn: socket.socket) -> None:
    with conn:
        try:
            handle(conn)
        except OSError:
            pass


def read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- a keep-alive client that does not pin its sockets ------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    sent_chunked: bool

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


class Session:
    """requests.Session whose replies keep no reference to the connection: a live
    requests.Response holds its socket open even after the session is closed."""

    def __init__(self) -> None:
        self._session = requests.Session()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self._session.close()
        gc.collect()

    def request(self, method: str, url: str, **kwargs: Any) -> Reply:
        r = self._session.request(method, url, timeout=10, **kwargs)
        try:
            return Reply(
                r.status_code,
                {k.lower(): v for k, v in r.headers.items()},
                r.content,
                r.request.headers.get("transfer-encoding") == "chunked",
            )
        finally:
            r.close()

    def get(self, url: str, **kwargs: Any) -> Reply:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Reply:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> Reply:
        return self.request("PUT", url, **kwargs)


# --- the stealer ------------------------------------------------------------------------------


class Stealer:
    """Listens on 127.0.0.1:0; every accepted connection is served by serve_stolen_http."""

    def __init__(
        self,
        portal: anyio.from_thread.BlockingPortal,
        original_port: int,
        local_port: int,
        http_filter: HttpFilter,
        first_bytes_timeout: float = 10.0,
    ) -> None:
        self.original_port = original_port
        self.local_port = local_port
        self.filter = http_filter
        self.first_bytes_timeout = first_bytes_timeout
        self.accepted = 0
        self.active = 0
        self.heads: list[RequestHead] = []
        self.errors: list[BaseException] = []
        self._portal = portal
        self._scope: anyio.CancelScope | None = None
        self._future, self.port = portal.start_task(self._serve)

    async def _serve(self, *, task_status: anyio.abc.TaskStatus[int]) -> None:
        # raw accept(), as the agent's stealing listener does: the engine takes the socket
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        try:
            with anyio.CancelScope() as self._scope:
                task_status.started(listener.getsockname()[1])
                async with anyio.create_task_group() as tg:
                    while True:
                        await anyio.wait_readable(listener)
                        try:
                            conn, _ = listener.accept()
                        except BlockingIOError:
                            continue
                        tg.start_soon(self._handle, conn)
        finally:
            listener.close()

    async def _handle(self, client: socket.socket) -> None:
        self.accepted += 1
        self.active += 1
        try:
            await serve_stolen_http(
                client,
                self._choose,
                self._original,
                first_bytes_timeout=self.first_bytes_timeout,
            )
        except Exception as exc:  # a test failure, not a server crash
            self.errors.append(exc)
        finally:
            client.close()
            self.active -= 1

    def _choose(self, head: RequestHead) -> SocketDestination | None:
        self.heads.append(head)
        if self.filter.matches(head.method, head.path, head.headers):
            return SocketDestination("local", "local app", self._connect(self.local_port))
        return None

    @property
    def _original(self) -> SocketDestination:
        return SocketDestination(None, "original service", self._connect(self.original_port))

    @staticmethod
    def _connect(port: int) -> Callable[[], Awaitable[socket.socket]]:
        return lambda: connect_socket("tcp", "127.0.0.1", port)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        assert self._scope is not None
        self._portal.call(self._scope.cancel)
        self._future.result(timeout=5)


# The agent runs on uvloop where it is installed: then the engine is tested on both loops.
LOOPS = ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])


@pytest.fixture(params=LOOPS)
def portal(request: pytest.FixtureRequest) -> Iterator[anyio.from_thread.BlockingPortal]:
    options = {"use_uvloop": request.param == "uvloop"}
    with anyio.from_thread.start_blocking_portal(backend_options=options) as portal:
        yield portal


@pytest.fixture
def servers() -> Iterator[tuple[_Server, _Server]]:
    with http_server("original") as original, http_server("local") as local:
        yield original, local


@contextmanager
def stealer_for(
    portal: anyio.from_thread.BlockingPortal, original_port: int, local_port: int, **kw: Any
) -> Iterator[Stealer]:
    stealer = Stealer(
        portal,
        original_port,
        local_port,
        HttpFilter.from_config({"header_filter": "^x-mirrord-user: me$"}),
        **kw,
    )
    try:
        yield stealer
        wait_for(lambda: stealer.active == 0, "stealer connections still open")
        assert not stealer.errors, stealer.errors
    finally:
        stealer.stop()


@pytest.fixture
def stealer(portal, servers) -> Iterator[Stealer]:
    original, local = servers
    with stealer_for(portal, original.port, local.port) as stealer:
        yield stealer


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


# --- keep-alive routing -----------------------------------------------------------------------


def test_requests_session_alternates_on_one_kept_alive_connection(stealer, servers):
    original, local = servers
    with Session() as session:
        for i in range(20):
            mine = i % 2 == 0
            r = session.get(stealer.url(f"/item/{i}?q={i}"), headers=ME if mine else {})
            assert r.status == 200
            assert r.json()["who"] == ("local" if mine else "original")
            assert r.json()["path"] == f"/item/{i}?q={i}"
    assert stealer.accepted == 1  # the client kept its one connection
    assert original.accepted == 1  # the original's connection was reused across requests
    assert local.accepted == 1  # and so was the local app's
    wait_for(lambda: original.open == 0 and local.open == 0, "upstream connections left open")


def test_http_client_alternates_and_keeps_its_socket(stealer, servers):
    original, _local = servers
    conn = http.client.HTTPConnection("127.0.0.1", stealer.port, timeout=10)
    try:
        conn.connect()
        sock = conn.sock
        for i in range(10):
            mine = i % 3 == 0
            conn.request("GET", f"/{i}", headers={"X-Mirrord-User": "me"} if mine else {})
            resp = conn.getresponse()
            assert json.loads(resp.read())["who"] == ("local" if mine else "original")
            assert conn.sock is sock
    finally:
        conn.close()
    assert stealer.accepted == 1 and original.accepted == 1


def test_asyncio_local_app_under_uvicorn(portal, servers):
    uvicorn = pytest.importorskip("uvicorn")
    original, _local = servers

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        payload = json.dumps({"who": "uvicorn", "len": len(body), "path": scope["path"]})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": payload.encode()})

    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        wait_for(lambda: server.started, "uvicorn did not start")
        with (
            stealer_for(portal, original.port, sock.getsockname()[1]) as stealer,
            Session() as session,
        ):
            for i in range(6):
                mine = i % 2 == 1
                r = session.post(stealer.url(f"/u{i}"), data=b"x" * i, headers=ME if mine else {})
                assert r.json()["who"] == ("uvicorn" if mine else "original")
                assert r.json()["len"] == i
            assert stealer.accepted == 1
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


# --- bodies -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mine", [True, False], ids=["to-local", "to-original"])
def test_large_content_length_and_chunked_bodies_arrive_intact(stealer, mine):
    body = os.urandom(5 * 1024 * 1024)
    digest = hashlib.sha256(body).hexdigest()
    who = "local" if mine else "original"
    headers = ME if mine else {}
    with Session() as session:
        r = session.post(stealer.url("/upload"), data=body, headers=headers)
        assert (r.json()["who"], r.json()["len"], r.json()["sha"]) == (who, len(body), digest)

        def pieces() -> Iterator[bytes]:  # a generator: requests sends it chunked
            for i in range(0, len(body), 300_000):
                yield body[i : i + 300_000]

        r = session.put(stealer.url("/chunked-up"), data=pieces(), headers=headers)
        assert r.sent_chunked
        assert (r.json()["who"], r.json()["len"], r.json()["sha"]) == (who, len(body), digest)
        # and the connection still serves the other side afterwards
        r = session.get(stealer.url("/after"), headers={} if mine else ME)
        assert r.json()["who"] == ("original" if mine else "local")
    assert stealer.accepted == 1


def test_chunked_response_head_and_100_continue(stealer, servers):
    original, _local = servers
    conn = http.client.HTTPConnection("127.0.0.1", stealer.port, timeout=10)
    try:
        conn.request("GET", "/chunked")  # a chunked response from the original
        resp = conn.getresponse()
        assert resp.getheader("transfer-encoding") == "chunked"
        assert json.loads(resp.read())["path"] == "/chunked"

        conn.request("HEAD", "/head", headers={"x-mirrord-user": "me"})
        resp = conn.getresponse()
        assert resp.status == 200 and int(resp.getheader("content-length")) > 0
        assert resp.read() == b""  # no body follows a HEAD response

        # http.server answers `Expect: 100-continue` with a 100 before the final response
        conn.request("POST", "/expect", body=b"hello", headers={"Expect": "100-continue"})
        resp = conn.getresponse()
        assert json.loads(resp.read())["len"] == 5

        conn.request("GET", "/last", headers={"x-mirrord-user": "me"})
        assert json.loads(conn.getresponse().read())["who"] == "local"
    finally:
        conn.close()
    assert stealer.accepted == 1 and original.accepted == 1


# --- ordering and connection handling ---------------------------------------------------------


class _SharedFile:
    """Lets successive http.client.HTTPResponse objects read one buffered socket file."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def makefile(self, *_args: Any, **_kwargs: Any) -> Any:
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)

    def close(self) -> None:
        pass  # each response "closes" its file when its body is read: keep it for the next


def test_pipelined_requests_are_answered_in_order(stealer):
    requests_bytes = b"".join(
        b"GET /p%d HTTP/1.1\r\nHost: svc\r\n%s\r\n" % (i, b"x-mirrord-user: me\r\n" * mine)
        for i, mine in enumerate([True, False, True, False])
    )
    with socket.create_connection(("127.0.0.1", stealer.port), timeout=10) as sock:
        sock.sendall(requests_bytes)  # all four in one write
        shared = _SharedFile(sock)
        answers = []
        for _ in range(4):
            resp = http.client.HTTPResponse(shared)  # type: ignore[arg-type]
            resp.begin()
            answers.append(json.loads(resp.read()))
    assert [(a["who"], a["path"]) for a in answers] == [
        ("local", "/p0"),
        ("original", "/p1"),
        ("local", "/p2"),
        ("original", "/p3"),
    ]


def test_connection_close_from_client_and_from_server(stealer, servers):
    original, _local = servers
    with socket.create_connection(("127.0.0.1", stealer.port), timeout=10) as sock:
        sock.sendall(b"GET /bye HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):  # the stealer closes after the response
            data += chunk
        assert data.startswith(b"HTTP/1.1 200") and b'"who": "original"' in data

    with Session() as session:
        r = session.get(stealer.url("/close"))  # the original answers `Connection: close`
        assert r.json()["who"] == "original"
        r = session.get(stealer.url("/again"))
        assert r.json()["who"] == "original"
    assert stealer.accepted == 3  # the session had to reconnect after the close
    wait_for(lambda: original.open == 0, "original connections left open")


def test_http_1_0_client(stealer):
    with socket.create_connection(("127.0.0.1", stealer.port), timeout=10) as sock:
        sock.sendall(b"GET /old HTTP/1.0\r\nx-mirrord-user: me\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert b'"who": "local"' in data and b'"path": "/old"' in data


def test_blank_lines_between_requests_are_tolerated(stealer):
    with socket.create_connection(("127.0.0.1", stealer.port), timeout=10) as sock:
        shared = _SharedFile(sock)
        for i in range(2):
            sock.sendall(b"POST /b%d HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok\r\n" % i)
            resp = http.client.HTTPResponse(shared)  # type: ignore[arg-type]
            resp.begin()
            assert json.loads(resp.read())["path"] == f"/b{i}"
    assert stealer.accepted == 1


# --- raw relay --------------------------------------------------------------------------------


def _echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def test_non_http_client_is_relayed_raw_to_the_original(portal, servers):
    _original, local = servers
    tls_hello = bytes.fromhex("16030100a5010000a10303") + os.urandom(4000)
    with (
        raw_server(_echo) as echo_port,
        stealer_for(portal, echo_port, local.port) as stealer,
        socket.create_connection(("127.0.0.1", stealer.port), timeout=10) as sock,
    ):
        sock.sendall(tls_hello)
        got = b""
        while len(got) < len(tls_hello):
            got += sock.recv(65536)
        assert got == tls_hello
        # the relay is byte-for-byte both ways, and passes on a half-close
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
        assert rest == b"GET / HTTP/1.1\r\n\r\n"
    assert stealer.heads == []


def test_server_first_protocol_gets_through_after_the_timeout(portal, servers):
    _original, local = servers

    def greeter(conn: socket.socket) -> None:
        conn.sendall(b"220 smtp ready\r\n")
        _echo(conn)

    with (
        raw_server(greeter) as port,
        stealer_for(portal, port, local.port, first_bytes_timeout=0.3) as stealer,
        socket.create_connection(("127.0.0.1", stealer.port), timeout=10) as sock,
    ):
        assert sock.recv(100) == b"220 smtp ready\r\n"
        sock.sendall(b"EHLO me\r\n")
        assert sock.recv(100) == b"EHLO me\r\n"


def test_websocket_upgrade_is_relayed_to_the_local_app(portal, servers):
    original, _local = servers

    def websocket_app(conn: socket.socket) -> None:
        head = read_head(conn)
        assert b"upgrade: websocket" in head.lower()
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\nfrom-local:"
        )
        _echo(conn)

    with (
        raw_server(websocket_app) as local_port,
        stealer_for(portal, original.port, local_port) as stealer,
        socket.create_connection(("127.0.0.1", stealer.port), timeout=10) as sock,
    ):
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: svc\r\nx-mirrord-user: me\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n\r\nearly-frame"  # bytes sent before the 101 arrives
        )
        want = b"from-local:early-frame"
        got = b""
        while not got.endswith(want):
            chunk = sock.recv(65536)
            assert chunk, got
            got += chunk
        assert got.startswith(b"HTTP/1.1 101 ")
        sock.sendall(b"\x81\x05hello")
        assert sock.recv(100) == b"\x81\x05hello"
    assert original.accepted == 0


def test_a_denied_upgrade_stays_http(stealer, servers):
    original, _local = servers
    with Session() as session:
        r = session.get(stealer.url("/ws"), headers={"Connection": "Upgrade", "Upgrade": "h2c"})
        assert r.json()["who"] == "original"  # http.server ignores the upgrade
        r = session.get(stealer.url("/next"), headers=ME)
        assert r.json()["who"] == "local"
    assert stealer.accepted == 1


# --- failures of the local app ----------------------------------------------------------------


def test_local_app_refusing_gives_502(portal, servers):
    original, _local = servers
    with (
        stealer_for(portal, original.port, closed_port()) as stealer,
        Session() as session,
    ):
        r = session.get(stealer.url("/"), headers=ME)
        assert r.status == 502
        assert r.headers["connection"] == "close"
        assert "mirrord" in r.text
        # other requests still reach the original (on a new connection)
        assert session.get(stealer.url("/")).json()["who"] == "original"
        r = session.post(stealer.url("/"), data=os.urandom(1_000_000), headers=ME)
        assert r.status == 502


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def test_local_app_reset_before_and_during_the_response(portal, servers):
    original, _local = servers

    def flaky(conn: socket.socket) -> None:
        head = read_head(conn)
        if b"/partial" in head:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-some")
            time.sleep(0.1)
        _reset(conn)  # closes with RST (the context manager's close)

    with raw_server(flaky) as local_port, stealer_for(portal, original.port, local_port) as s:
        with Session() as session:
            assert session.get(s.url("/nothing"), headers=ME).status == 502
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        try:
            conn.request("GET", "/partial", headers=ME)
            resp = conn.getresponse()
            assert resp.status == 200
            with pytest.raises(http.client.IncompleteRead):
                resp.read()
        finally:
            conn.close()


def test_original_closing_its_idle_connection_is_reopened(portal, servers):
    _original, local = servers
    accepted = []

    def one_shot(conn: socket.socket) -> None:
        """Answers one request, keep-alive in words, then closes while idle."""
        accepted.append(1)
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        time.sleep(0.05)

    with (
        raw_server(one_shot) as port,
        stealer_for(portal, port, local.port) as stealer,
        Session() as session,
    ):
        for _ in range(3):
            assert session.get(stealer.url("/")).text == "ok"
            time.sleep(0.2)  # the original closes its side meanwhile
        assert stealer.accepted == 1
    assert len(accepted) == 3


def test_client_vanishing_closes_everything(stealer, servers):
    original, local = servers
    with socket.create_connection(("127.0.0.1", stealer.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        got = b""
        while b"original" not in got:
            chunk = sock.recv(65536)
            assert chunk, got
            got += chunk
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: a\r\nx-mirrord-user: me\r\nContent-Length: 9\r\n\r\nabc"
        )
        wait_for(lambda: local.accepted == 1, "the local app got no connection")
        _reset(sock)
    wait_for(lambda: stealer.active == 0, "the stealer still serves a gone client")
    wait_for(lambda: original.open == 0 and local.open == 0, "upstream connections left open")


def test_connect_is_relayed_raw_once_accepted(portal, servers):
    _original, local = servers

    def proxy(conn: socket.socket) -> None:
        assert read_head(conn).startswith(b"CONNECT backend:443 HTTP/1.1\r\n")
        conn.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        _echo(conn)

    with (
        raw_server(proxy) as port,
        stealer_for(portal, port, local.port) as stealer,
        socket.create_connection(("127.0.0.1", stealer.port), timeout=10) as sock,
    ):
        sock.sendall(b"CONNECT backend:443 HTTP/1.1\r\nHost: backend:443\r\n\r\n")
        assert read_head(sock) == b"HTTP/1.1 200 Connection Established\r\n\r\n"
        sock.sendall(b"\x16\x03\x01tunnelled")
        assert sock.recv(100) == b"\x16\x03\x01tunnelled"


def test_a_protocol_error_mid_body_relays_the_rest_raw_to_the_same_target(portal, servers):
    original, _local = servers
    got: list[bytes] = []

    def recorder(conn: socket.socket) -> None:
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        got.append(data)
        conn.sendall(b"recorded")

    sent = (
        b"POST /x HTTP/1.1\r\nHost: a\r\nx-mirrord-user: me\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\nnot-a-chunk-size\r\n\x00\x01\x02"
    )
    with (
        raw_server(recorder) as local_port,
        stealer_for(portal, original.port, local_port) as stealer,
        socket.create_connection(("127.0.0.1", stealer.port), timeout=10) as sock,
    ):
        sock.sendall(sent)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        assert reply == b"recorded"
    assert got == [sent]  # every byte, in order, to where the request was going
    assert original.accepted == 0


def test_an_early_response_reaches_the_client(portal, servers):
    """The target answers 413 and closes while the client is still uploading."""
    original, _local = servers

    def refuses(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!"
        )
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(1)
        with contextlib.suppress(OSError):
            while conn.recv(65536):  # what a server does before closing (lingering close)
                pass

    with (
        raw_server(refuses) as local_port,
        stealer_for(portal, original.port, local_port) as stealer,
    ):
        conn = http.client.HTTPConnection("127.0.0.1", stealer.port, timeout=10)
        try:
            conn.request("POST", "/up", body=os.urandom(3_000_000), headers=ME)
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (413, b"big!")
        finally:
            conn.close()


def test_garbage_after_a_kept_alive_request_goes_raw_to_the_original(portal, servers):
    _original, local = servers
    with (
        raw_server(_echo) as echo_port,
        stealer_for(portal, echo_port, local.port) as stealer,
        socket.create_connection(("127.0.0.1", stealer.port), timeout=10) as sock,
    ):
        shared = _SharedFile(sock)
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: a\r\nx-mirrord-user: me\r\n\r\n")
        resp = http.client.HTTPResponse(shared)  # type: ignore[arg-type]
        resp.begin()
        assert json.loads(resp.read())["who"] == "local"
        garbage = b"\x00\x01 not http any more"
        sock.sendall(garbage)
        assert shared.read(len(garbage)) == garbage
        shared.file.close()  # a socket's fd stays open while a makefile() of it is
