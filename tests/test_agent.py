"""The agent as a peer: only its own session gets in, garbage is refused, it ends on its own."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import msgpack
import pytest
from helpers import REPO

from mirrord.protocol import Codec, Env, Error, GetEnv, Hello, HelloOk, Message, Ping, Pong
from mirrord.protocol.codec import encode
from mirrord.protocol.messages import MAX_FRAME, PROTOCOL_VERSION

TOKEN = "the-session-token"


def start_agent(*args: str, token: str = TOKEN) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mirrord.agent", "--target", "targetless", *args],
        env={**os.environ, "MIRRORD_AGENT_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


@pytest.fixture
def agent() -> Iterator[tuple[str, int]]:
    proc = start_agent("--listen", "127.0.0.1:0", "--idle-timeout", "30")
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    host, port = ready["address"].rsplit(":", 1)
    try:
        yield host, int(port)
    finally:
        proc.terminate()
        proc.wait(10)


def exchange(address: tuple[str, int], frames: list[bytes], expect: int = 0) -> list[Message]:
    """Send raw frames, collect what the agent answers until it closes, goes quiet, or
    (with `expect`) that many messages arrived."""
    sock = socket.create_connection(address, timeout=5)
    for frame in frames:
        sock.sendall(frame)
    codec = Codec()
    messages: list[Message] = []
    try:
        while data := sock.recv(65536):
            codec.feed(data)
            messages.extend(codec)
            if expect and len(messages) >= expect:
                break
            if not expect and messages and isinstance(messages[-1], Pong):
                break
    except TimeoutError:
        pass
    sock.close()
    return messages


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def hello(token: str = TOKEN) -> bytes:
    return encode(Hello(version=PROTOCOL_VERSION, token=token, client="test"))


def test_right_token_is_served(agent: tuple[str, int]) -> None:
    replies = exchange(agent, [hello(), encode(GetEnv(req=1)), encode(Ping(seq=5))], expect=3)
    assert isinstance(replies[0], HelloOk)
    # requests are answered as they complete: the order of the two is not promised
    assert Pong(seq=5) in replies[1:]
    assert any(isinstance(r, Env) and r.req == 1 for r in replies[1:])


def test_wrong_token_is_refused_and_agent_stays_up(agent: tuple[str, int]) -> None:
    replies = exchange(agent, [hello("not-the-token"), encode(Ping(seq=1))])
    assert replies == [Error(code="auth", message="wrong session token")]
    # requests before a handshake are refused too
    assert [type(r) for r in exchange(agent, [encode(Ping(seq=1))])] == [Error]
    assert isinstance(exchange(agent, [hello(), encode(Ping(seq=2))])[-1], Pong)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00\x00\x05hello",  # not msgpack
        struct.pack(">I", MAX_FRAME + 1),  # too large a frame
        frame(msgpack.packb([1, 2])),  # not a map
        frame(msgpack.packb({"t": "ping", "seq": "x"})),  # a field of the wrong type
        frame(msgpack.packb({"t": "launch_missiles"})),  # an unknown message
        b"GET / HTTP/1.1\r\n\r\n",  # a lost HTTP client
    ],
)
def test_garbage_gets_an_error_and_agent_stays_up(agent: tuple[str, int], garbage: bytes) -> None:
    replies = exchange(agent, [hello(), garbage])
    assert isinstance(replies[0], HelloOk)
    assert len(replies) == 2 and isinstance(replies[1], Error), replies
    assert isinstance(exchange(agent, [hello(), encode(Ping(seq=3))])[-1], Pong)


def test_listens_only_on_loopback() -> None:
    proc = start_agent("--listen", "0.0.0.0:0")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode != 0
    assert "loopback only" in err


def test_refuses_to_start_without_a_token() -> None:
    proc = start_agent("--listen", "127.0.0.1:0", token="")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode != 0 and "MIRRORD_AGENT_TOKEN" in err


def test_exits_when_no_client_for_its_idle_timeout() -> None:
    proc = start_agent("--listen", "127.0.0.1:0", "--idle-timeout", "0.5")
    assert proc.stdout is not None
    json.loads(proc.stdout.readline())
    started = time.monotonic()
    assert proc.wait(15) == 0
    assert time.monotonic() - started < 10
