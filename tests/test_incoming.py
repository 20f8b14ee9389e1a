"""Incoming traffic: the target's port comes to the local app (steal) or a copy of it does
(mirror). Real servers under mirrord, real clients, real iptables in the lab."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from helpers import REPO, agent_pids, mirrord, stop_process, wait_gone

from mirrord.lab import Lab

SERVERS = {
    "http.server": """
        import http.server, json, os, sys
        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                reply = json.dumps({"who": "local-app", "client": self.client_address[0],
                                    "body": body.decode(), "port": self.server.socket.getsockname()[1]}).encode()
                os.write(1, reply + b"\\n")
                self.send_response(200); self.send_header("Content-Length", str(len(reply)))
                self.end_headers(); self.wfile.write(reply)
            def log_message(self, *a): pass
        srv = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H)
        print("ready", flush=True)
        srv.serve_forever()
    """,
    "asyncio": """
        import asyncio, json, os
        async def handle(reader, writer):
            while True:
                head = await reader.readuntil(b"\\r\\n\\r\\n")
                length = int([l for l in head.split(b"\\r\\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
                body = await reader.readexactly(length)
                peer = writer.get_extra_info("peername")[0]
                port = writer.get_extra_info("sockname")[1]
                reply = json.dumps({"who": "local-app", "client": peer, "body": body.decode(), "port": port}).encode()
                os.write(1, reply + b"\\n")
                writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(reply) + reply)
                await writer.drain()
        async def main():
            server = await asyncio.start_server(handle, "0.0.0.0", 8080)
            print("ready", flush=True)
            await server.serve_forever()
        asyncio.run(main())
    """,
    "uvicorn": """
        import json, os, uvicorn
        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            body = b""
            while True:
                event = await receive()
                body += event.get("body", b"")
                if not event.get("more_body"):
                    break
            reply = json.dumps({"who": "local-app", "client": scope["client"][0],
                                "body": body.decode(), "port": scope["server"][1]}).encode()
            os.write(1, reply + b"\\n")
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(reply)).encode())]})
            await send({"type": "http.response.body", "body": reply})
        class Ready(uvicorn.Server):
            async def startup(self, sockets=None):
                await super().startup(sockets)
                print("ready", flush=True)
        # loop="asyncio": uvloop sockets live in libuv, where only the native relay sees them
        Ready(uvicorn.Config(app, host="0.0.0.0", port=8080, log_level="warning", loop="asyncio")).run()
    """,
    "flask": """
        import json, os
        from flask import Flask, request
        app = Flask(__name__)
        @app.post("/")
        def index():
            reply = json.dumps({"who": "local-app", "client": request.remote_addr,
                                "body": request.get_data(as_text=True),
                                "port": int(request.environ["SERVER_PORT"])}).encode()
            os.write(1, reply + b"\\n")
            return reply
        from werkzeug.serving import make_server  # what app.run() uses, with a ready signal
        server = make_server("0.0.0.0", 8080, app, threaded=True)
        print("ready", flush=True)
        server.serve_forever()
    """,
    "raw socket": """
        import json, os, socket, threading
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", 8080))
        srv.listen()
        print("ready", flush=True)
        def serve(conn, addr):
            data = b""
            with conn:
                while True:
                    while b"\\r\\n\\r\\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        data += chunk
                    head, data = data.split(b"\\r\\n\\r\\n", 1)
                    length = int([l for l in head.split(b"\\r\\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
                    while len(data) < length:
                        data += conn.recv(65536)
                    body, data = data[:length], data[length:]
                    reply = json.dumps({"who": "local-app", "client": addr[0], "body": body.decode(),
                                        "port": srv.getsockname()[1]}).encode()
                    os.write(1, reply + b"\\n")
                    conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(reply) + reply)
        while True:
            threading.Thread(target=serve, args=srv.accept(), daemon=True).start()
    """,
}


class App:
    """A local server run under mirrord until the test ends."""

    def __init__(self, lab: Lab, tmp_path: Path, code: str, *flags: str) -> None:
        script = tmp_path / "server.py"
        script.write_text(textwrap.dedent(code))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mirrord", "-t", f"netns/{lab.staging_ns}", *flags, str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise AssertionError(
                f"app did not start: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}"
            )

    def seen(self, count: int, timeout: float = 15.0) -> list[dict]:
        """The next `count` requests the app reports having handled."""
        assert self.proc.stdout is not None
        seen: list[dict] = []
        deadline = time.monotonic() + timeout
        while len(seen) < count and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            seen.append(json.loads(line))
        return seen

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGINT)


@pytest.fixture
def start_app(lab: Lab, tmp_path: Path) -> Iterator:
    apps: list[App] = []

    def start(code: str, *flags: str) -> App:
        apps.append(App(lab, tmp_path, code, *flags))
        return apps[-1]

    yield start
    for app in apps:
        app.stop()


def steal_config(tmp_path: Path, incoming: object) -> str:
    path = tmp_path / "mirrord.json"
    path.write_text(json.dumps({"feature": {"network": {"incoming": incoming}}}))
    return str(path)


def nat_rules(lab: Lab) -> str:
    return lab.run_in(lab.staging_ns, ["iptables-save", "-t", "nat"]).stdout


def wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


@pytest.mark.parametrize("server", list(SERVERS))
def test_steal_gives_the_client_the_local_apps_answers(
    lab: Lab, tmp_path: Path, start_app, server: str, transport: str
) -> None:
    app = start_app(SERVERS[server], "-f", steal_config(tmp_path, "steal"))
    url = f"http://{lab.staging_addr}:8080/"
    with requests.Session() as client:  # keep-alive: several requests per connection
        answers = [client.post(url, data=f"body-{i}", timeout=10).json() for i in range(20)]
    assert [a["body"] for a in answers] == [f"body-{i}" for i in range(20)]
    assert {a["who"] for a in answers} == {"local-app"}
    # the app sees the real client and the port it asked for
    assert {a["client"] for a in answers} == {lab.host_addr}
    assert {a["port"] for a in answers} == {8080}
    assert "MIRRORD_" in nat_rules(lab)
    app.stop()
    # the staging service answers again and no rule is left behind
    assert wait_for(lambda: "MIRRORD_" not in nat_rules(lab))
    assert requests.get(url, timeout=10).text == "staging-service"


ORIGIN_APP = """
    import http.server, json, os
    socket_path = os.environ["MIRRORD_INTPROXY_SOCKET"]
    if os.environ.get("DROP_ORIGIN_TABLE"):
        os.remove(socket_path + ".origins")  # an intproxy without one: the app must ask
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            body = json.dumps({"client": list(self.client_address[:2])}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a): pass
    class S(http.server.HTTPServer):
        request_queue_size = 5  # http.server's own, too small for a burst
    srv = S(("0.0.0.0", 8080), H)
    print("ready", flush=True)
    print(os.getpid(), flush=True)
    srv.serve_forever()
"""


@pytest.mark.parametrize("table", ["origin table", "no table"])
@pytest.mark.parametrize("layer", ["native relay", "python layer"])
def test_accept_reports_each_stolen_client_and_the_listener_takes_a_burst(
    lab: Lab, tmp_path: Path, start_app, monkeypatch, transport: str, layer: str, table: str
) -> None:
    """The app learns who is behind each connection from the intproxy's origin table (or,
    without one, by asking), and its listener's queue holds the intproxy's bursts."""
    if layer == "python layer":
        monkeypatch.setenv("MIRRORD_RELAY_LIBRARY", "none")
    if table == "no table":
        monkeypatch.setenv("DROP_ORIGIN_TABLE", "1")
    app = start_app(ORIGIN_APP, "-f", steal_config(tmp_path, "steal"))
    assert app.proc.stdout is not None
    pid = app.proc.stdout.readline().strip()
    url = f"http://{lab.staging_addr}:8080/"
    for _ in range(5):  # a new connection each
        seen = requests.get(url, headers={"Connection": "close"}, timeout=10).json()
        assert seen["client"][0] == lab.host_addr
        assert seen["client"][1] != 8080  # the client's own port, not the listener's
    listening = subprocess.run(
        ["ss", "-Hltnp"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    queue = [line.split()[2] for line in listening if f"pid={pid}," in line]
    assert queue == ["1024"]  # the app asked for 5


def test_steal_works_when_the_port_is_taken_here(lab: Lab, tmp_path: Path, start_app) -> None:
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # earlier tests' TIME_WAIT
    blocker.bind(("0.0.0.0", 8080))  # the port is taken on this machine
    blocker.listen()
    try:
        start_app(SERVERS["http.server"], "-f", steal_config(tmp_path, "steal"))
        answer = requests.post(f"http://{lab.staging_addr}:8080/", data="x", timeout=10).json()
        assert answer["who"] == "local-app"
        assert answer["port"] == 8080  # getsockname still reports the port it asked for
    finally:
        blocker.close()


def test_clients_inside_the_target_are_stolen_too(lab: Lab, tmp_path: Path, start_app) -> None:
    start_app(SERVERS["http.server"], "-f", steal_config(tmp_path, "steal"))
    code = f"import urllib.request; print(urllib.request.urlopen(urllib.request.Request('http://{lab.staging_addr}:8080/', data=b'in')).read().decode())"
    out = lab.run_in(lab.staging_ns, [sys.executable, "-c", code]).stdout
    assert json.loads(out)["who"] == "local-app"


def test_rules_of_a_killed_agent_go_at_the_next_start(lab: Lab, tmp_path: Path, start_app) -> None:
    app = start_app(
        SERVERS["http.server"].replace(
            'print("ready", flush=True)',
            'print("ready", flush=True); import os; print(os.environ["MIRRORD_INTPROXY_SOCKET"], flush=True)',
        ),
        "-f",
        steal_config(tmp_path, "steal"),
    )
    session = os.path.dirname(app.proc.stdout.readline().strip())
    agents = agent_pids(f"netns/{lab.staging_ns}")
    assert agents
    for pid in agents:
        os.kill(pid, signal.SIGKILL)
    app.stop()
    assert wait_gone(session) == []
    assert "MIRRORD_" in nat_rules(lab)  # SIGKILL leaves no chance to clean up
    # any new session in that namespace removes what the dead agent left
    (tmp_path / "noop.py").write_text("print('noop')")
    proc = mirrord("-t", f"netns/{lab.staging_ns}", str(tmp_path / "noop.py"))
    assert proc.returncode == 0, proc.stderr
    assert "MIRRORD_" not in nat_rules(lab)
    assert requests.get(f"http://{lab.staging_addr}:8080/", timeout=10).text == "staging-service"


@pytest.mark.parametrize("server", list(SERVERS))
def test_mirror_copies_requests_and_leaves_the_target_alone(
    lab: Lab, tmp_path: Path, start_app, server: str
) -> None:
    app = start_app(SERVERS[server])  # mirror is the default mode
    url = f"http://{lab.staging_addr}:8080/"
    sessions = [requests.Session() for _ in range(3)]
    answers = [sessions[i % 3].post(url, data=f"body-{i}", timeout=10).text for i in range(30)]
    # the client is answered by the staging service, as if mirrord were not there
    assert set(answers) == {"staging-service"}
    seen = app.seen(30)
    assert sorted(s["body"] for s in seen) == sorted(f"body-{i}" for i in range(30))
    # per connection, the order is the client's
    for k in range(3):
        mine = [s["body"] for s in seen if int(s["body"].split("-")[1]) % 3 == k]
        assert mine == [f"body-{i}" for i in range(30) if i % 3 == k]
    assert {s["client"] for s in seen} == {lab.host_addr}
    # mirroring does not touch the target's network configuration
    assert "MIRRORD_" not in nat_rules(lab)


def header_steal(tmp_path: Path, name: str, value: str) -> str:
    path = tmp_path / f"steal-{value}.json"
    path.write_text(
        json.dumps(
            {
                "feature": {
                    "network": {
                        "incoming": {
                            "mode": "steal",
                            "http_filter": {"header_filter": f"{name}: {value}"},
                        }
                    }
                }
            }
        )
    )
    return str(path)


def test_filtered_steal_on_one_kept_alive_connection(lab: Lab, tmp_path: Path, start_app) -> None:
    start_app(SERVERS["http.server"], "-f", header_steal(tmp_path, "x-mirrord-user", "me"))
    url = f"http://{lab.staging_addr}:8080/"
    with requests.Session() as client:
        answers = []
        for i in range(10):
            headers = {"X-Mirrord-User": "me"} if i % 2 == 0 else {}
            reply = client.post(url, data=f"b{i}", headers=headers, timeout=10)
            answers.append(reply.json()["body"] if reply.text.startswith("{") else reply.text)
    # matching requests reach the local app, the others the staging service, in order
    assert answers == [
        "b0",
        "staging-service",
        "b2",
        "staging-service",
        "b4",
        "staging-service",
        "b6",
        "staging-service",
        "b8",
        "staging-service",
    ]
    # curl, another real client, with and without the header
    curl = ["curl", "-s", "--max-time", "10", "-d", "from-curl", url]
    assert (
        json.loads(
            subprocess.run(
                [*curl, "-H", "x-mirrord-user: me"], capture_output=True, text=True
            ).stdout
        )["body"]
        == "from-curl"
    )
    assert subprocess.run(curl, capture_output=True, text=True).stdout == "staging-service"


def test_two_sessions_with_different_filters_share_a_port(
    lab: Lab, tmp_path: Path, start_app
) -> None:
    me = start_app(
        SERVERS["http.server"].replace("local-app", "app-of-me"),
        "-f",
        header_steal(tmp_path, "x-user", "me"),
    )
    you = start_app(
        SERVERS["http.server"].replace("local-app", "app-of-you"),
        "-f",
        header_steal(tmp_path, "x-user", "you"),
    )
    url = f"http://{lab.staging_addr}:8080/"
    assert (
        requests.post(url, data="1", headers={"x-user": "me"}, timeout=10).json()["who"]
        == "app-of-me"
    )
    assert (
        requests.post(url, data="2", headers={"x-user": "you"}, timeout=10).json()["who"]
        == "app-of-you"
    )
    assert requests.post(url, data="3", timeout=10).text == "staging-service"
    you.stop()
    # the other session's filter keeps working after one leaves
    assert (
        requests.post(url, data="4", headers={"x-user": "me"}, timeout=10).json()["who"]
        == "app-of-me"
    )
    assert (
        requests.post(url, data="5", headers={"x-user": "you"}, timeout=10).text
        == "staging-service"
    )
    me.stop()


def test_unfiltered_steal_of_a_stolen_port_is_refused(lab: Lab, tmp_path: Path, start_app) -> None:
    start_app(SERVERS["http.server"], "-f", header_steal(tmp_path, "x-user", "me"))
    script = tmp_path / "second.py"
    script.write_text(textwrap.dedent(SERVERS["http.server"]))
    proc = mirrord(
        "-t",
        f"netns/{lab.staging_ns}",
        "-f",
        steal_config(tmp_path, "steal"),
        str(script),
        timeout=30,
    )
    assert proc.returncode != 0
    assert "already stolen" in proc.stderr


def test_port_options(lab: Lab, tmp_path: Path, start_app) -> None:
    url = f"http://{lab.staging_addr}:8080/"
    # port_mapping: the app listens on 9999 here and gets the target's 8080
    app = start_app(
        SERVERS["http.server"].replace("8080", "9999"),
        "-f",
        steal_config(tmp_path, {"mode": "steal", "port_mapping": [[9999, 8080]]}),
    )
    assert requests.post(url, data="mapped", timeout=10).json()["body"] == "mapped"
    app.stop()
    assert wait_for(lambda: "MIRRORD_" not in nat_rules(lab))
    # ignore_ports: that listener stays the app's own, the target's port is untouched
    app = start_app(
        SERVERS["http.server"],
        "-f",
        steal_config(tmp_path, {"mode": "steal", "ignore_ports": [8080]}),
    )
    assert requests.post(url, data="x", timeout=10).text == "staging-service"
    assert "MIRRORD_" not in nat_rules(lab)
    assert (
        requests.post("http://127.0.0.1:8080/", data="local", timeout=10).json()["body"] == "local"
    )
    app.stop()


def test_mirror_with_an_http_filter(lab: Lab, tmp_path: Path, start_app) -> None:
    incoming = {"mode": "mirror", "http_filter": {"header_filter": "x-mirror: yes"}}
    app = start_app(SERVERS["http.server"], "-f", steal_config(tmp_path, incoming))
    url = f"http://{lab.staging_addr}:8080/"
    with requests.Session() as client:
        for i in range(6):
            headers = {"x-mirror": "yes"} if i % 2 else {}
            assert (
                client.post(url, data=f"m{i}", headers=headers, timeout=10).text
                == "staging-service"
            )
    # only the matching requests reach the local app, in order
    assert [s["body"] for s in app.seen(3)] == ["m1", "m3", "m5"]


def test_existing_connections_keep_working_and_listen_ports(
    lab: Lab, tmp_path: Path, start_app
) -> None:
    url = f"http://{lab.staging_addr}:8080/"
    before = requests.Session()
    assert before.get(url, timeout=10).text == "staging-service"  # opened before the steal
    # listen_ports: the app asks for 8080 but really listens on 9998 here
    incoming = {"mode": "steal", "listen_ports": [[8080, 9998]]}
    start_app(SERVERS["http.server"], "-f", steal_config(tmp_path, incoming))
    answer = requests.post(url, data="new", timeout=10).json()
    assert answer["body"] == "new" and answer["port"] == 8080  # getsockname: what it asked for
    assert requests.post("http://127.0.0.1:9998/", data="here", timeout=10).json()["body"] == "here"
    # a connection that existed before the steal still reaches the staging service
    assert before.get(url, timeout=10).text == "staging-service"
    before.close()


def test_ipv6_clients_are_stolen_too(lab: Lab, tmp_path: Path, start_app) -> None:
    curl = ["curl", "-s", "--max-time", "5", "-6", "-d", "over-v6", "http://[::1]:8080/"]
    assert lab.run_in(lab.staging_ns, curl).returncode != 0  # nothing listens there
    app = start_app(SERVERS["http.server"], "-f", steal_config(tmp_path, "steal"))
    reply = lab.run_in(lab.staging_ns, curl)
    assert json.loads(reply.stdout)["body"] == "over-v6", reply
    rules = lab.run_in(lab.staging_ns, ["ip6tables-save", "-t", "nat"]).stdout
    assert "MIRRORD_" in rules
    app.stop()
    assert wait_for(
        lambda: "MIRRORD_" not in lab.run_in(lab.staging_ns, ["ip6tables-save", "-t", "nat"]).stdout
    )


def test_a_large_mirrored_body_reaches_the_app_whole(lab: Lab, tmp_path: Path, start_app) -> None:
    # the body streams through the intproxy (it is never held whole there)
    app = start_app(
        """
        import hashlib, http.server, json, os
        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def do_POST(self):
                left, digest = int(self.headers["Content-Length"]), hashlib.sha256()
                while left:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    digest.update(chunk)
                    left -= len(chunk)
                os.write(1, json.dumps({"sha256": digest.hexdigest()}).encode() + b"\\n")
                self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
            def log_message(self, *a): pass
        srv = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H)
        print("ready", flush=True)
        srv.serve_forever()
        """
    )
    # (within what the agent buffers per mirrored flow: past it a copy is cut, not waited on)
    body = os.urandom(8 * 1024 * 1024)
    reply = requests.post(f"http://{lab.staging_addr}:8080/", data=body, timeout=60)
    assert reply.text == "staging-service"
    (seen,) = app.seen(1, timeout=60)
    assert seen["sha256"] == hashlib.sha256(body).hexdigest()


def test_a_connection_open_when_the_steal_ends_keeps_being_answered(
    lab: Lab, tmp_path: Path, start_app
) -> None:
    # the REDIRECT rules stay while their connections live: deleting one makes the kernel
    # stop translating the replies of connections it redirected (they would hang)
    app = start_app(SERVERS["http.server"], "-f", header_steal(tmp_path, "x-dev", "alice"))
    url = f"http://{lab.staging_addr}:8080/"
    with requests.Session() as everyone:  # one kept-alive connection, through the agent
        assert everyone.get(url, timeout=10).text == "staging-service"
        app.stop()
        # the port is released: new connections go straight to the staging service
        assert wait_for(lambda: "-j RETURN" in nat_rules(lab))
        assert everyone.get(url, timeout=10).text == "staging-service"
    assert requests.get(url, timeout=10).text == "staging-service"
    # once that connection is closed nothing needs the rules: they go
    assert wait_for(lambda: "MIRRORD_" not in nat_rules(lab))
