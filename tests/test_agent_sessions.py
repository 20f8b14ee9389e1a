"""One agent, many sessions: whatever one session does or suffers, the others go on.

A real local agent in the lab, real sessions under mirrord, and raw clients of the agent that
misbehave on purpose (they subscribe, then vanish while connections are being delivered).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from helpers import agent_pids
from test_incoming import SERVERS, App, header_steal, wait_for

from mirrord.lab import Lab
from mirrord.launch.local_agent import agent_for
from mirrord.protocol import Codec, Hello, HelloOk, Ping, Pong, Subscribe, Subscribed
from mirrord.protocol.codec import encode
from mirrord.protocol.messages import PROTOCOL_VERSION

pytestmark = pytest.mark.timeout(120)


class RawClient:
    """A client of the agent speaking the protocol by hand, so that it can misbehave."""

    def __init__(self, target: str) -> None:
        handle = agent_for(target, log_level="info", env=dict(os.environ))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(handle.address.removeprefix("unix:"))
        self.codec = Codec()
        self.sock.sendall(encode(Hello(version=PROTOCOL_VERSION, token=handle.token, client="t")))
        assert isinstance(self.next(), HelloOk)

    def next(self, kind: type | None = None) -> object:
        while True:
            msg = self.codec.next_message()
            if msg is not None and (kind is None or isinstance(msg, kind)):
                return msg
            if msg is None:
                data = self.sock.recv(65536)
                assert data, "the agent closed the link"
                self.codec.feed(data)

    def subscribe(self, mode: str, http_filter: dict | None = None) -> None:
        text = json.dumps(http_filter) if http_filter else ""
        self.sock.sendall(encode(Subscribe(1, 8080, mode, text, "", 0, False, 0)))
        assert isinstance(self.next(Subscribed), Subscribed)

    def vanish(self) -> None:
        """Gone at once, with unread frames: the agent's next send fails (a reset)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def flood(url: str, headers: dict[str, str], seconds: float) -> None:
    """Requests from 8 threads for `seconds`; their answers do not matter here."""
    deadline = time.monotonic() + seconds

    def one() -> None:
        with requests.Session() as s:
            while time.monotonic() < deadline:
                with contextlib.suppress(requests.RequestException):
                    s.get(url, headers=headers, timeout=3)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.fixture
def app_of_b(lab: Lab, tmp_path: Path) -> Iterator[App]:
    """Session B: a filtered steal of `x-user: b`, the session that must go on."""
    code = SERVERS["http.server"].replace("local-app", "app-of-b")
    app = App(lab, tmp_path, code, "-f", header_steal(tmp_path, "x-user", "b"))
    yield app
    app.stop()


@pytest.mark.parametrize("mode", ["filtered steal", "mirror"])
def test_a_session_vanishing_mid_delivery_leaves_the_agent_and_the_others(
    lab: Lab, app_of_b: App, mode: str
) -> None:
    target = f"netns/{lab.staging_ns}"
    agent = agent_pids(target)
    url = f"http://{lab.staging_addr}:8080/"
    a = RawClient(target)
    if mode == "mirror":
        a.subscribe("mirror")
        headers: dict[str, str] = {}  # every request is mirrored to A
    else:
        a.subscribe("steal", {"header_filter": "x-user: a"})
        headers = {"x-user": "a"}  # A's requests: delivered to A, which never reads
    flooding = threading.Thread(target=flood, args=(url, headers, 3.0))
    flooding.start()
    time.sleep(1.0)
    a.vanish()  # while connections are being delivered to it
    flooding.join()
    assert agent_pids(target) == agent, "the agent died with one of its sessions"
    # B's steal and the pass-through to staging still work; A's requests reach staging now
    reply = requests.post(url, data="hello", headers={"x-user": "b"}, timeout=10)
    assert reply.json()["who"] == "app-of-b"
    assert requests.post(url, data="x", timeout=10).text == "staging-service"
    assert requests.post(url, data="x", headers={"x-user": "a"}, timeout=10).text == (
        "staging-service"
    )


def test_subscribing_while_iptables_waits_does_not_freeze_other_sessions(
    lab: Lab, app_of_b: App
) -> None:
    """iptables waits for the xtables lock (we hold it); meanwhile B's link is answered."""
    target = f"netns/{lab.staging_ns}"
    a, b = RawClient(target), RawClient(target)
    holder = subprocess.Popen(["flock", "/run/xtables.lock", "sleep", "3"])
    try:
        time.sleep(0.3)  # the lock is held
        a.sock.sendall(encode(Subscribe(1, 8081, "steal", "", "", 0, False, 0)))
        time.sleep(0.3)  # A's iptables call is waiting for the lock
        started = time.monotonic()
        b.sock.sendall(encode(Ping(seq=7)))
        assert b.next(Pong) == Pong(seq=7)
        answered = time.monotonic() - started
    finally:
        holder.wait(10)
    assert isinstance(a.next(Subscribed), Subscribed)  # and A's rule went in once it could
    # the lock is held for 3 s: an agent running iptables on its event loop answers after it
    assert answered < 1.5, f"B waited {answered:.1f} s for a Pong while iptables ran"


def test_accept_survives_running_out_of_descriptors(lab: Lab, app_of_b: App) -> None:
    target = f"netns/{lab.staging_ns}"
    (agent,) = agent_pids(target)
    url = f"http://{lab.staging_addr}:8080/"
    in_use = len(os.listdir(f"/proc/{agent}/fd"))
    limits = resource.prlimit(agent, resource.RLIMIT_NOFILE)
    resource.prlimit(agent, resource.RLIMIT_NOFILE, (in_use + 8, limits[1]))
    idle = []
    try:
        # idle clients (they send nothing) each hold a descriptor of the agent, until none is left
        for _ in range(40):
            idle.append(socket.create_connection((lab.staging_addr, 8080), timeout=5))
        time.sleep(1.0)
    finally:
        for sock in idle:
            sock.close()
        resource.prlimit(agent, resource.RLIMIT_NOFILE, limits)
    assert wait_for(lambda: agent_pids(target) == [agent]), "the agent died of EMFILE"
    assert requests.post(url, data="x", timeout=10).text == "staging-service"
    assert requests.post(url, data="x", headers={"x-user": "b"}, timeout=10).json()["who"] == (
        "app-of-b"
    )


class Everyone:
    """Everyone else: one request after another without the developer's header, from a thread;
    records errors (with when) and the slowest answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.count = 0
        self.errors: list[str] = []
        self.slowest = 0.0
        self.begun = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        begun = self.begun
        # a new connection per request, as ab does (a kept-alive one was once seen reset at
        # the moment the app was killed: an open finding, see the branch's report)
        while not self._stop.is_set():
            started = time.monotonic()
            when = f"at {started - begun:.2f} s"
            try:
                reply = requests.get(self.url, timeout=10)
                if reply.text != "staging-service":
                    self.errors.append(f"{when}: {reply.status_code} {reply.text[:80]}")
            except requests.RequestException as exc:
                self.errors.append(f"{when}: {exc!r}")
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.count += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


def test_a_stuck_or_killed_local_app_never_slows_everyone_else(lab: Lab, tmp_path: Path) -> None:
    url = f"http://{lab.staging_addr}:8080/"
    app = App(lab, tmp_path, SERVERS["http.server"], "-f", header_steal(tmp_path, "x-dev", "alice"))
    alice = {"x-dev": "alice"}
    log = agent_for(f"netns/{lab.staging_ns}", log_level="info", env=dict(os.environ)).log
    try:
        assert requests.post(url, data="hi", headers=alice, timeout=10).json()["who"] == "local-app"
        everyone = Everyone(url)
        # the app stops reading anything: the developer's requests pile up, unanswered
        os.kill(app.proc.pid, signal.SIGSTOP)
        stuck = [threading.Thread(target=_post_quietly, args=(url, alice)) for _ in range(80)]
        for t in stuck:
            t.start()
        time.sleep(3)
        count_while_stuck = everyone.count
        # then it dies, holding its steal
        os.kill(app.proc.pid, signal.SIGKILL)
        for t in stuck:
            t.join(15)
        # once its session is gone, its requests are answered by staging
        assert wait_for(lambda: _post_quietly(url, alice) == "staging-service", timeout=15)
        time.sleep(1)
        everyone.stop()
    finally:
        app.stop()
    assert everyone.errors == [], Path(log).read_text()[-3000:]
    assert count_while_stuck > 10  # everyone else was served meanwhile
    # a request to staging takes milliseconds: seconds would be a stall behind the stuck app
    assert everyone.slowest < 2.0, f"a request of everyone else took {everyone.slowest:.1f} s"


def _post_quietly(url: str, headers: dict[str, str]) -> str:
    try:
        return requests.post(url, data="x", headers=headers, timeout=3).text
    except requests.RequestException as exc:
        return repr(exc)
