"""The intproxy alone: the real `python -m mirrord.proxy` between a scripted fake agent and
fake layers, all speaking the real frames over real unix sockets (no root, no lab).

The fake agent is a plain socket server written here: it checks the intproxy's Hello and
answers each request with something that names the request id it saw, so a layer can tell
that its request reached the agent under the intproxy's own id and came back under its own.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import pytest

from mirrord.protocol import (
    Env,
    Error,
    GetEnv,
    Hello,
    HelloOk,
    Message,
    Ping,
    Pong,
    RequestFailed,
    Resolve,
    origins,
)
from mirrord.protocol.codec import Codec, encode
from mirrord.protocol.messages import PROTOCOL_VERSION

TIMEOUT = 10.0


class Peer:
    """One end of a link: whole frames out, decoded messages in (blocking, with a timeout)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(TIMEOUT)
        self.codec = Codec()

    def send(self, msg: Message) -> None:
        self.sock.sendall(encode(msg))

    def receive(self) -> Message | None:
        """The next message; None when the other side closed."""
        while True:
            msg = self.codec.next_message()
            if msg is not None:
                return msg
            data = self.sock.recv(65536)
            if not data:
                return None
            self.codec.feed(data)

    def close(self) -> None:
        self.sock.close()


@dataclass
class FakeAgent:
    """Accepts the intproxy's link and answers by script; remembers what it received."""

    path: Path
    token: str
    received: list[Message] = field(default_factory=list)
    hello: Hello | None = None
    link: Peer | None = None
    ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen(1)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        self.link = peer = Peer(conn)
        peer.sock.settimeout(None)
        first = peer.receive()
        assert isinstance(first, Hello)
        self.hello = first
        if first.token != self.token:
            peer.send(Error(code="auth", message="wrong session token"))
            peer.close()
            return
        peer.send(HelloOk(version=PROTOCOL_VERSION))
        self.ready.set()
        try:
            while (msg := peer.receive()) is not None:
                self.received.append(msg)
                if isinstance(msg, Ping):
                    peer.send(Pong(seq=msg.seq))
                elif isinstance(msg, GetEnv):
                    peer.send(Env(req=msg.req, env={"AGENT_SAW_REQ": str(msg.req)}))
                elif isinstance(msg, Resolve):
                    peer.send(
                        RequestFailed(req=msg.req, kind="gai", errno=-2, message=f"{msg.host}?")
                    )
        except OSError:
            pass

    def die(self) -> None:
        """The agent goes away: its end of the link closes."""
        assert self.link is not None
        self.link.sock.shutdown(socket.SHUT_RDWR)
        self.link.close()

    def requests(self, kind: type[Message]) -> list[Message]:
        return [m for m in self.received if isinstance(m, kind)]


@dataclass
class Intproxy:
    proc: subprocess.Popen[str]
    socket: Path
    token: str
    watched: subprocess.Popen[bytes]

    def layer(self, token: str | None = None) -> Peer:
        """A fake layer, connected and greeted."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.socket))
        peer = Peer(sock)
        peer.send(Hello(version=PROTOCOL_VERSION, token=token or self.token, client="fake"))
        return peer

    def greeted_layer(self) -> Peer:
        peer = self.layer()
        assert isinstance(peer.receive(), HelloOk)
        return peer

    def wait(self, timeout: float = TIMEOUT) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[FakeAgent]:
    fake = FakeAgent(tmp_path / "agent.sock", secrets.token_hex(8))
    fake.start()
    yield fake
    fake.listener.close()


@pytest.fixture
def intproxy(agent: FakeAgent, tmp_path: Path) -> Iterator[Intproxy]:
    token = secrets.token_hex(8)
    watched = subprocess.Popen(["sleep", "600"])
    proxy_socket = tmp_path / "proxy.sock"
    env = {**os.environ, "MIRRORD_AGENT_TOKEN": agent.token, "MIRRORD_PROXY_TOKEN": token}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mirrord.proxy",
            "--agent",
            f"unix:{agent.path}",
            "--socket",
            str(proxy_socket),
            "--watch-pid",
            str(watched.pid),
            "--log-level",
            "debug",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "intproxy.log", "w"),  # noqa: SIM115 - the child owns it
        text=True,
    )
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline() or "{}")
    assert ready.get("ready") and ready.get("socket") == str(proxy_socket), (
        tmp_path / "intproxy.log"
    ).read_text()
    assert agent.ready.wait(TIMEOUT)
    running = Intproxy(proc, proxy_socket, token, watched)
    try:
        yield running
    finally:
        watched.kill()
        watched.wait()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_the_intproxy_greets_the_agent_with_its_token(intproxy: Intproxy, agent: FakeAgent):
    assert agent.hello is not None and agent.hello.client == "intproxy"
    assert oct(os.stat(intproxy.socket).st_mode & 0o777) == oct(0o600)


def test_requests_are_forwarded_with_remapped_ids(intproxy: Intproxy, agent: FakeAgent) -> None:
    first, second = intproxy.greeted_layer(), intproxy.greeted_layer()
    # both layers use the same request id: the agent must see two different ones
    first.send(GetEnv(req=7))
    second.send(GetEnv(req=7))
    replies = [first.receive(), second.receive()]
    assert all(isinstance(r, Env) and r.req == 7 for r in replies), replies
    seen_by_agent = [m.req for m in agent.requests(GetEnv)]
    assert len(seen_by_agent) == 2 and len(set(seen_by_agent)) == 2
    # each layer got the answer to its own request, not the other's
    got = sorted(int(r.env["AGENT_SAW_REQ"]) for r in replies)  # type: ignore[union-attr]
    assert got == sorted(seen_by_agent)
    # a failure comes back the same way, under the layer's id
    first.send(Resolve(req=42, host="db.svc", port=5432, family=0, type=0, proto=0, flags=0))
    reply = first.receive()
    assert isinstance(reply, RequestFailed) and reply.req == 42 and reply.message == "db.svc?"
    assert agent.requests(Resolve)[0].req not in (42, *seen_by_agent)


def test_a_layer_with_the_wrong_token_is_refused(intproxy: Intproxy) -> None:
    layer = intproxy.layer(token="not-the-token")
    reply = layer.receive()
    assert isinstance(reply, Error) and reply.code == "auth"
    assert layer.receive() is None


def _frame(payload: dict) -> bytes:
    body = msgpack.packb(payload)
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (_frame({"t": "no_such_message", "req": 1}), "protocol"),
        (_frame({"t": "get_env", "req": "one"}), "protocol"),
        (struct.pack(">I", 1 << 31), "too_large"),  # a length far above the frame limit
    ],
)
def test_a_bad_frame_from_a_layer_gets_an_error(
    intproxy: Intproxy, agent: FakeAgent, frame: bytes, code: str
) -> None:
    layer = intproxy.greeted_layer()
    layer.sock.sendall(frame)
    reply = layer.receive()
    assert isinstance(reply, Error) and reply.code.startswith(code), reply
    assert layer.receive() is None  # and it is dropped
    # the intproxy itself carries on for the other layers
    other = intproxy.greeted_layer()
    other.send(GetEnv(req=1))
    assert isinstance(other.receive(), Env)


def test_a_frame_that_does_not_belong_on_the_layer_link_is_refused(
    intproxy: Intproxy, agent: FakeAgent
) -> None:
    layer = intproxy.greeted_layer()
    layer.send(Pong(seq=1))  # not a request: dropped
    layer.send(Env(req=9, env={}))  # a reply the agent sends, not a layer: refused by id
    reply = layer.receive()
    assert isinstance(reply, RequestFailed) and reply.req == 9, reply
    assert "does not take env" in reply.message
    # neither reached the agent, and the layer's link goes on
    assert agent.requests(Env) == [] and agent.requests(Pong) == []
    layer.send(GetEnv(req=2))
    reply = layer.receive()
    assert isinstance(reply, Env) and reply.req == 2


def test_requests_fail_cleanly_when_the_agent_dies(intproxy: Intproxy, agent: FakeAgent):
    layer = intproxy.greeted_layer()
    agent.die()
    deadline = time.monotonic() + TIMEOUT
    while True:
        layer.send(GetEnv(req=5))
        reply = layer.receive()
        assert isinstance(reply, Env | RequestFailed), reply
        if isinstance(reply, RequestFailed):
            break  # (an Env may still have been on its way)
        assert time.monotonic() < deadline
    assert reply.req == 5 and "no connection to the agent" in reply.message


def test_it_exits_when_the_watched_pid_and_the_layers_are_gone(intproxy: Intproxy) -> None:
    layer = intproxy.greeted_layer()
    intproxy.watched.kill()
    intproxy.watched.wait()
    # a layer (a child of the app) still runs: the intproxy stays for it
    assert intproxy.wait(timeout=1.5) is None
    layer.send(GetEnv(req=1))
    assert isinstance(layer.receive(), Env)
    layer.close()
    assert intproxy.wait() == 0
    assert not intproxy.socket.exists()


def test_an_origin_table_that_cannot_be_made_is_no_table(tmp_path: Path) -> None:
    """The layers then ask about each connection (tests/test_incoming.py, "no table")."""
    from mirrord.proxy.incoming import create_origin_table

    assert create_origin_table(str(tmp_path / "gone" / "proxy.sock.origins")) is None
    table = create_origin_table(str(tmp_path / "proxy.sock.origins"))
    assert table is not None and len(table) == origins.TABLE_SIZE
    assert (tmp_path / "proxy.sock.origins").stat().st_mode & 0o777 == 0o600
    table.close()
