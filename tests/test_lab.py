"""The network-namespace test lab itself: topology, services, DNS, isolation, teardown."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from mirrord.lab import Lab, LabError, create_lab, netns_pids
from mirrord.lab import services as lab_services

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (not root)")


def py_in(lab: Lab, ns: str, code: str) -> str:
    """Run Python code inside a namespace (real `ip netns exec`) and return its stdout."""
    r = lab.run_in(ns, [sys.executable, "-c", code], timeout=20)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


# ---------------------------------------------------------------- from inside staging


def test_dns_names_resolve_inside_staging(lab: Lab) -> None:
    code = (
        "import socket, json; print(json.dumps({n: sorted({a[4][0] for a in "
        "socket.getaddrinfo(n, 80, proto=socket.IPPROTO_TCP)}) for n in "
        "['backend.staging.svc', 'tls.staging.svc', 'db.staging.svc', 'hosts-only.staging.svc']}))"
    )
    got = json.loads(py_in(lab, lab.staging_ns, code))
    assert got == {
        name: [lab.backend_addr]
        for name in [
            "backend.staging.svc",
            "tls.staging.svc",
            "db.staging.svc",
            "hosts-only.staging.svc",
        ]
    }


def test_unknown_name_fails_fast_inside_staging(lab: Lab) -> None:
    code = (
        "import socket, time\nt = time.monotonic()\n"
        "try:\n    socket.getaddrinfo('nope.example.com', 80)\n    print('resolved')\n"
        "except socket.gaierror as e:\n    print('gaierror', round(time.monotonic() - t, 2))\n"
    )
    out = py_in(lab, lab.staging_ns, code)
    assert out.startswith("gaierror"), out
    assert float(out.split()[1]) < 1.0


def test_http_to_backend_from_staging(lab: Lab) -> None:
    code = (
        "import urllib.request\n"
        "print(urllib.request.urlopen('http://backend.staging.svc:8080/some/path?x=1', timeout=5).read().decode())"
    )
    reply = json.loads(py_in(lab, lab.staging_ns, code))
    assert reply["service"] == "backend"
    assert reply["client"] == lab.staging_backend_addr
    assert reply["path"] == "/some/path?x=1"
    assert reply["method"] == "GET"


def test_backend_echoes_post_body_over_keepalive(lab: Lab) -> None:
    code = (
        "import http.client, json\n"
        "c = http.client.HTTPConnection('backend.staging.svc', 8080, timeout=5)\n"
        "out = []\n"
        "for i in range(3):\n"
        "    c.request('POST', '/p', body=f'hello {i}'.encode())\n"
        "    out.append(json.loads(c.getresponse().read()))\n"
        "print(json.dumps(out))\n"
    )
    replies = json.loads(py_in(lab, lab.staging_ns, code))
    assert [r["body"] for r in replies] == ["hello 0", "hello 1", "hello 2"]
    assert {r["method"] for r in replies} == {"POST"}
    assert len({r["client_port"] for r in replies}) == 1  # one connection, kept alive


def test_staging_loopback_http(lab: Lab) -> None:
    code = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9090/', timeout=5).read().decode())"
    assert py_in(lab, lab.staging_ns, code) == "staging-loopback"


def test_udp_echo_backend_and_loopback(lab: Lab) -> None:
    code = (
        "import socket\n"
        "for addr in [('backend.staging.svc', 9999), ('127.0.0.1', 9999)]:\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n"
        "    s.sendto(b'ping', addr); print(s.recv(100).decode())\n"
    )
    assert py_in(lab, lab.staging_ns, code).splitlines() == ["echo:ping", "loopback-echo:ping"]


def test_tls_backend_verified_with_lab_ca(lab: Lab) -> None:
    code = (
        "import ssl, sys, urllib.request\n"
        "ctx = ssl.create_default_context(cafile=sys.argv[1])\n"
        "print(urllib.request.urlopen('https://tls.staging.svc:8443/', context=ctx, timeout=5).read().decode())"
    )
    r = lab.run_in(lab.staging_ns, [sys.executable, "-c", code, str(lab.ca_pem)], timeout=20)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["service"] == "backend-tls"


def test_call_in_creates_sockets_inside_the_namespace(lab: Lab) -> None:
    sock = lab.call_in(lab.staging_ns, socket.create_connection, (lab.backend_addr, 8080), 5)
    with sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["client"] == lab.staging_backend_addr


# ---------------------------------------------------------------- from the host


def test_backend_unreachable_from_host(lab: Lab) -> None:
    start = time.monotonic()
    with pytest.raises(OSError):
        socket.create_connection((lab.backend_addr, lab.service_port), timeout=2).close()
    assert time.monotonic() - start < 2


def test_staging_names_do_not_resolve_on_host(lab: Lab) -> None:
    for name in ("backend.staging.svc", "hosts-only.staging.svc"):
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo(name, 80)


def test_staging_service_reachable_from_host(lab: Lab) -> None:
    with requests.Session() as s:
        for _ in range(3):  # keep-alive
            r = s.get(lab.service_url + "/anything", timeout=5)
            assert r.status_code == 200
            assert r.text == "staging-service"
        assert s.post(lab.service_url, data=b"x" * 1000, timeout=5).text == "staging-service"


def test_staging_service_is_the_oldest_process_with_the_staging_env(lab: Lab) -> None:
    def start_time(pid: int) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])

    pids = netns_pids(lab.staging_ns)
    assert lab.service_pid in pids
    assert min(pids, key=lambda p: (start_time(p), p)) == lab.service_pid
    assert all(start_time(p) > start_time(lab.service_pid) for p in pids if p != lab.service_pid)
    environ = Path(f"/proc/{lab.service_pid}/environ").read_bytes().split(b"\0")
    env = dict(e.decode().split("=", 1) for e in environ if e)
    assert env == lab.staging_env
    assert env["STAGING_GREETING"] == "hello-from-staging"
    assert "python" in os.readlink(f"/proc/{lab.service_pid}/exe")


def test_no_default_route_in_lab_namespaces(lab: Lab) -> None:
    for ns in (lab.staging_ns, lab.backend_ns):
        routes = subprocess.run(
            ["ip", "-n", ns, "route"], capture_output=True, text=True, check=True
        )
        assert "default" not in routes.stdout
    host = subprocess.run(["ip", "route", "show", "198.18.0.0/15"], capture_output=True, text=True)
    assert "unreachable" in host.stdout


# ---------------------------------------------------------------- lifecycle


def _lab_leftovers(lab: Lab, pids: list[int]) -> list[str]:
    left = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    left += [ns for ns in (lab.staging_ns, lab.backend_ns) if ns in netns]
    if subprocess.run(["ip", "link", "show", lab.host_veth], capture_output=True).returncode == 0:
        left.append(lab.host_veth)
    left += [str(d) for d in (Path("/etc/netns") / lab.staging_ns, lab.tmpdir) if d.exists()]
    left += [f"pid {p}" for p in pids if _alive(p)]
    return left


@needs_root
def test_close_removes_everything() -> None:
    lab = create_lab()
    try:
        # a stray process started inside staging must be killed too
        stray = lab.popen_in(lab.staging_ns, ["sleep", "60"])
        pids = [*lab.pids.values(), stray.pid]
        assert all(_alive(p) for p in pids)
    finally:
        lab.close()
    assert _lab_leftovers(lab, pids) == []
    lab.close()  # idempotent


@needs_root
def test_context_manager_and_two_labs_at_once() -> None:
    with create_lab() as a, create_lab() as b:
        assert a.slot != b.slot
        assert len({a.staging_addr, b.staging_addr, a.backend_addr, b.backend_addr}) == 4
        for lab in (a, b):
            assert requests.get(lab.service_url, timeout=5).text == "staging-service"
            code = (
                "import urllib.request, json; print(json.loads(urllib.request.urlopen("
                "'http://backend.staging.svc:8080/', timeout=5).read())['client'])"
            )
            assert py_in(lab, lab.staging_ns, code) == lab.staging_backend_addr
    for lab in (a, b):
        assert _lab_leftovers(lab, list(lab.pids.values())) == []


@needs_root
def test_failed_creation_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    real_services = lab_services.lab_services
    seen: list[Lab] = []

    def broken_services(lab: Lab, *args: Path) -> list[Any]:
        seen.append(lab)
        services = real_services(lab, *args)
        services[2].argv = [sys.executable, "-c", "raise SystemExit('boom: port taken')"]
        return services

    monkeypatch.setattr(lab_services, "lab_services", broken_services)
    with pytest.raises(LabError) as info:
        create_lab()
    assert "backend-udp" in str(info.value) and "boom: port taken" in str(info.value)
    assert "\n" not in str(info.value)
    (lab,) = seen
    assert _lab_leftovers(lab, list(lab.pids.values())) == []
    assert not Path(f"/run/mirrord-lab/mrd{lab.slot}.json").exists()
