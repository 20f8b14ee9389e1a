"""mirrord as a library (`mirrord.Session`), against the real lab: every method a user
calls, with the target's real services, files, DNS and iptables."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import requests
from helpers import agent_pids, nat_rules, wait_for

import mirrord
from mirrord.lab import Lab, remote_files

BACKEND = "http://backend.staging.svc:8080"


def test_session_env_run_and_activate(lab: Lab) -> None:
    with mirrord.Session(
        f"netns/{lab.staging_ns}", overrides={"feature.env.exclude": "SECRET_*"}
    ) as staging:
        assert staging.env["STAGING_GREETING"] == "hello-from-staging"
        assert "SECRET_TOKEN" not in staging.env
        # a program run under the session, as the CLI would run it
        code = "import socket; print(socket.gethostbyname('backend.staging.svc'))"
        proc = staging.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        assert proc.stdout.strip() == lab.backend_addr, proc.stderr
        # this very process, for a while; activations nest
        with staging.activate():
            with staging.activate(env=True):
                assert os.environ["SERVICE_NAME"] == "staging-service"
            assert "SERVICE_NAME" not in os.environ  # the inner one put it back
            reply = requests.get(f"{BACKEND}/in-process", timeout=10).json()
            assert staging.active
        assert not staging.active
        assert reply["path"] == "/in-process" and reply["client"] == lab.staging_backend_addr
        # undone: the name is unknown here again
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo("backend.staging.svc", 8080)
        # one session's layer at a time: patches are process-wide
        with (
            staging.activate(),
            mirrord.Session("targetless") as other,
            pytest.raises(mirrord.MirrordError, match="another mirrord session is active"),
        ):
            other.activate()
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("backend.staging.svc", 8080)


def test_session_reads_the_targets_files(lab: Lab) -> None:
    root = Path(remote_files.ROOT)
    assert not (root / "config").exists()  # only the target has them
    with mirrord.Session(target=f"netns/{lab.staging_ns}") as staging:
        assert staging.read_text(root / "config/settings.yaml").startswith("database:\n")
        assert staging.read_bytes(root / "config/current.yaml") == remote_files.SETTINGS_YAML
        big = staging.read_bytes(root / remote_files.BIG_FILE)  # many reads of a chunk each
        assert hashlib.sha256(big).hexdigest() == remote_files.big_file_sha256()
        assert sorted(staging.listdir(root / "config")) == [
            "app.ini",
            "current.yaml",
            "dangling",
            "nested",
            "settings.json",
            "settings.yaml",
        ]
        assert staging.stat(root / "config/settings.yaml").st_size == len(
            remote_files.SETTINGS_YAML
        )
        assert staging.stat(root / "config/current.yaml", follow_symlinks=False).st_size == len(
            "settings.yaml"
        )
        assert staging.exists(root / "secrets/token")
        assert not staging.exists(root / "config/dangling")
        with pytest.raises(FileNotFoundError) as missing:
            staging.read_text(root / "nope.txt")
        assert missing.value.filename == str(root / "nope.txt")
        with pytest.raises(NotADirectoryError):
            staging.listdir(root / "config/settings.yaml")
        with pytest.raises(ValueError, match="absolute"):
            staging.read_text("config/settings.yaml")


def test_session_resolves_connects_and_speaks_http_from_the_target(
    lab: Lab, transport: str
) -> None:
    with mirrord.Session(f"netns/{lab.staging_ns}") as staging:
        assert staging.resolve("backend.staging.svc") == [lab.backend_addr]
        assert staging.resolve("hosts-only.staging.svc") == [lab.backend_addr]  # its /etc/hosts
        with pytest.raises(socket.gaierror):
            staging.resolve("nowhere.staging.svc")

        with staging.connect(("backend.staging.svc", 8080), timeout=10) as sock:
            sock.sendall(b"GET /raw HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
            answer = b"".join(iter(lambda: sock.recv(65536), b""))
            if transport == "fd-passing":  # the target's own socket, no relay
                assert sock.getpeername() == (lab.backend_addr, 8080)
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body["path"] == "/raw" and body["client"] == lab.staging_backend_addr
        with pytest.raises(ConnectionRefusedError):
            staging.connect((lab.backend_addr, 1))

        reply = staging.get(f"{BACKEND}/items", params={"q": "1"})
        assert isinstance(reply, httpx.Response) and reply.status_code == 200
        assert reply.json()["path"] == "/items?q=1"
        assert reply.json()["client"] == lab.staging_backend_addr
        posted = staging.post(f"{BACKEND}/orders", json={"n": 1}).json()
        assert (posted["method"], json.loads(posted["body"])) == ("POST", {"n": 1})
        # TLS: verified here, with the lab's CA, against a name only staging resolves
        with staging.http_client(verify=str(lab.ca_pem)) as client:
            tls = client.get(f"https://tls.staging.svc:{lab.tls_port}/secure").json()
        assert tls["service"] == "backend-tls" and tls["path"] == "/secure"
        with pytest.raises(httpx.ConnectError):
            staging.get("http://nowhere.staging.svc/")
        # the pool is httpx's: connections kept by default, or not, as `limits` says
        ports = [staging.get(f"{BACKEND}/").json()["client_port"] for _ in range(2)]
        assert ports[0] == ports[1]
        with staging.http_client(limits=httpx.Limits(max_keepalive_connections=0)) as fresh:
            ports = [fresh.get(f"{BACKEND}/").json()["client_port"] for _ in range(2)]
        assert ports[0] != ports[1]
    # nothing of this process was patched meanwhile
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("backend.staging.svc", 8080)


def test_session_mirror_shows_live_requests(lab: Lab) -> None:
    url = f"{lab.service_url}/orders"
    with (
        mirrord.Session(f"netns/{lab.staging_ns}") as staging,
        staging.mirror(8080, timeout=10) as live,
        staging.mirror(8080, http_filter={"path_filter": "^/orders"}, timeout=10) as orders,
    ):
        before = time.time()
        with requests.Session() as client:  # a user of staging, unaware of us
            client.get(f"{lab.service_url}/health", timeout=10)
            answers = [
                client.post(f"{url}?n={i}", data=f"order-{i}", headers={"x-n": str(i)}, timeout=10)
                for i in range(3)
            ]
        seen = [request for _, request in zip(range(4), live.http(), strict=False)]
        picked = [request for _, request in zip(range(3), orders, strict=False)]
    assert [a.text for a in answers] == ["staging-service"] * 3  # the target answered, as always
    assert [r.path for r in seen] == ["/health", "/orders", "/orders", "/orders"]
    assert [(r.method, r.path, r.query, r.body, r.headers["x-n"]) for r in picked] == [
        ("POST", "/orders", f"n={i}", f"order-{i}".encode(), str(i)) for i in range(3)
    ]
    assert {r.client[0] for r in seen} == {lab.host_addr}  # who really sent them
    assert len({r.connection for r in seen}) == 1  # one kept-alive connection
    assert all(before - 1 < r.time.timestamp() < time.time() for r in seen)
    assert picked[0].raw.startswith(b"POST /orders?n=0 HTTP/1.1\r\n")


def test_a_mirrored_copy_is_timed_when_it_came_not_when_its_reader_ran() -> None:
    """Each mirrored connection has a reader thread; a busy process runs it late."""
    from mirrord.api.mirror import _stamp_arrivals, _timed_reads

    with socket.create_server(("127.0.0.1", 0)) as listener:
        _stamp_arrivals(listener)  # as a Mirror's listener
        sender = socket.create_connection(listener.getsockname())
        reader, _ = listener.accept()
    with sender, reader:
        reads = _timed_reads(reader)
        sender.sendall(b"GET /first HTTP/1.1\r\n\r\n")
        came = time.time()
        time.sleep(0.5)  # the reader thread has not run yet
        data, when = next(reads)
        assert data == b"GET /first HTTP/1.1\r\n\r\n"
        assert came - 0.1 < when.timestamp() < came + 0.1
        sender.close()
        assert next(reads, None) is None


def test_mirror_raw_gives_the_bytes_of_any_protocol(lab: Lab) -> None:
    with (
        mirrord.Session(f"netns/{lab.staging_ns}") as staging,
        staging.mirror(8080, timeout=3) as mirror,
    ):
        with socket.create_connection((lab.staging_addr, 8080), timeout=10) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")  # Redis: never the blank line HTTP ends with
            answer = b"".join(iter(lambda: sock.recv(65536), b""))  # a 400, then it closes
        chunks = list(mirror.raw())  # until 3 s pass without more
    assert b"400 - Bad request" in answer  # (http.server answers it as HTTP/0.9)
    assert b"".join(c.data for c in chunks) == b"*1\r\n$4\r\nPING\r\n"
    assert {(c.client[0], c.connection) for c in chunks} == {(lab.host_addr, 1)}


def test_a_port_mirrored_again_after_its_mirror_closed_gets_the_new_copies(lab: Lab) -> None:
    with mirrord.Session(f"netns/{lab.staging_ns}") as staging:
        for name in ("first", "second"):
            with staging.mirror(8080, timeout=5) as mirror:
                requests.get(f"{lab.service_url}/{name}", timeout=10)
                assert next(mirror.http()).path == f"/{name}"


def test_mirror_buffer_is_bounded_and_counts_what_it_dropped(lab: Lab) -> None:
    with (
        mirrord.Session(f"netns/{lab.staging_ns}") as staging,
        staging.mirror(8080, buffer=2, timeout=2) as mirror,
    ):
        with requests.Session() as client:
            for i in range(6):
                client.get(f"{lab.service_url}/n/{i}", timeout=10)
        assert wait_for(lambda: mirror.dropped == 4), mirror.dropped
        assert [r.path for r in mirror.http()] == ["/n/4", "/n/5"]  # the newest are kept


def _wsgi(environ: dict, start_response: object) -> list[bytes]:
    body = json.dumps({"who": "wsgi", "client": environ["REMOTE_ADDR"]}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])  # type: ignore[operator]
    return [body]


async def _asgi(scope: dict, receive: object, send: object) -> None:
    body = json.dumps({"who": "asgi", "client": scope["client"][0], "path": scope["path"]})
    await send(  # type: ignore[operator]
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"json")]}
    )
    await send({"type": "http.response.body", "body": body.encode()})  # type: ignore[operator]


def test_session_steal_answers_with_wsgi_and_asgi_callables(lab: Lab) -> None:
    mine = {"x-user": "me"}
    with requests.Session() as client, mirrord.Session(f"netns/{lab.staging_ns}") as staging:
        with staging.steal(8080, http_filter={"header_filter": "x-user: me"}, handler=_wsgi):
            # the same kept-alive connection: matching requests here, the rest to staging
            assert client.get(f"{lab.service_url}/a", headers=mine, timeout=10).json() == {
                "who": "wsgi",
                "client": lab.host_addr,
            }
            assert client.get(f"{lab.service_url}/a", timeout=10).text == "staging-service"
            assert "MIRRORD_" in nat_rules(lab)
        # the agent drops its rules with our subscription (and a connection it held: a
        # new one). A matching request sent before the rules are gone can hang in the
        # agent's filtered steal, which is not this face's to mend (see the report).
        assert wait_for(lambda: "MIRRORD_" not in nat_rules(lab))
        assert requests.get(f"{lab.service_url}/a", headers=mine, timeout=10).text == (
            "staging-service"
        )
        with staging.steal(8080, handler=_asgi):  # the whole port
            stolen = requests.get(f"{lab.service_url}/b", timeout=10).json()
        assert stolen == {"who": "asgi", "client": lab.host_addr, "path": "/b"}
        with pytest.raises(mirrord.MirrordError, match="port 8080 is mirrored"):  # noqa: SIM117
            with staging.mirror(8080):
                staging.steal(8080, handler=_wsgi)
    assert requests.get(f"{lab.service_url}/c", timeout=10).text == "staging-service"
    assert wait_for(lambda: not agent_pids(f"netns/{lab.staging_ns}"))
    assert "MIRRORD_" not in nat_rules(lab)


def test_closing_a_session_undoes_what_it_left_open(lab: Lab) -> None:
    staging = mirrord.Session(f"netns/{lab.staging_ns}").start()
    staging.steal(8080, handler=_wsgi)
    mirror = staging.mirror(9090)
    staging.activate(env=True)
    with staging.scoped():
        inner = staging.mirror(7070)
        staging.activate()
    assert inner.closed and not mirror.closed and staging.active  # only what was inside
    assert requests.get(lab.service_url, timeout=10).json()["who"] == "wsgi"
    staging.close()
    assert mirror.closed and not staging.active and "SERVICE_NAME" not in os.environ
    assert requests.get(lab.service_url, timeout=10).text == "staging-service"
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("backend.staging.svc", 8080)


def test_session_errors_are_one_line_mirrord_errors(tmp_path: Path) -> None:
    with pytest.raises(mirrord.TargetNotFound) as missing:
        mirrord.Session("netns/no-such-namespace").start()
    assert "no-such-namespace" in str(missing.value) and "\n" not in str(missing.value)

    with pytest.raises(mirrord.ConfigInvalid) as bad:
        mirrord.Session("targetless", feature={"network": {"incoming": {"mode": "borrow"}}})
    assert "feature.network.incoming.mode" in str(bad.value) and "\n" not in str(bad.value)

    # a zombie still has a /proc entry but no namespaces left to enter: the agent fails
    zombie = subprocess.Popen(["true"])
    assert wait_for(lambda: not Path(f"/proc/{zombie.pid}/ns/net").exists())
    try:
        with pytest.raises(mirrord.AgentFailed) as failed:
            mirrord.Session(f"pid/{zombie.pid}").start()
    finally:
        zombie.wait()
    assert str(failed.value).startswith("the agent failed to start")
    assert "\n" not in str(failed.value) and f"/proc/{zombie.pid}/" in failed.value.log_tail


def test_a_session_needs_root_for_namespaces_and_says_so() -> None:
    code = (  # (the session is made first: this interpreter's files are root's)
        "import os, mirrord\n"
        "session = mirrord.Session('pid/1')\n"
        "os.setuid(65534)\n"
        "try:\n    session.start()\n"
        "except mirrord.NotRoot as exc:\n    print(exc)\n"
    )
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user (not root)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "target pid/1 needs root to enter its namespaces: run with sudo"


def test_mirrord_package_stays_light_for_the_layer() -> None:
    # the layer imports `mirrord` inside apps: pydantic, httpx, IPython must not come with it
    code = (
        "import json, sys, mirrord, mirrord.layer.layer\n"
        "print(json.dumps([m for m in ('pydantic', 'httpx', 'IPython') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert json.loads(out.stdout) == [], out.stderr
