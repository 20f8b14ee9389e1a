"""Outgoing traffic and DNS leave from the staging namespace (real lab, real clients)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import last_json, run_app

from mirrord.lab import Lab

# every test here runs with both transports
pytestmark = pytest.mark.usefixtures("transport")


def target(lab: Lab) -> str:
    return f"netns/{lab.staging_ns}"


def test_requests_reaches_backend_by_staging_name(lab: Lab, tmp_path: Path) -> None:
    code = """
        import json, requests
        r = requests.get("http://backend.staging.svc:8080/hello")
        print(json.dumps(r.json()))
    """
    seen = last_json(run_app(target(lab), code, tmp_path=tmp_path))
    assert seen["service"] == "backend"
    assert seen["path"] == "/hello"
    # the backend saw the connection come from staging, not from this host
    assert seen["client"] == lab.staging_backend_addr


def test_stdlib_clients_reach_backend(lab: Lab, tmp_path: Path, transport: str) -> None:
    code = """
        import http.client, json, socket, urllib.request
        out = {}
        c = http.client.HTTPConnection("backend.staging.svc", 8080, timeout=10)
        c.request("GET", "/http-client")
        out["http_client"] = json.loads(c.getresponse().read())["path"]
        out["urllib"] = json.loads(urllib.request.urlopen("http://backend.staging.svc:8080/urllib").read())["path"]
        s = socket.create_connection(("backend.staging.svc", 8080), timeout=10)
        s.sendall(b"GET /raw HTTP/1.1\\r\\nHost: b\\r\\nConnection: close\\r\\n\\r\\n")
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
        out["raw"] = json.loads(raw.split(b"\\r\\n\\r\\n", 1)[1])["path"]
        out["peer"] = list(s.getpeername())
        out["local"] = s.getsockname()[0]
        out["gethostbyname"] = socket.gethostbyname("backend.staging.svc")
        out["gethostbyname_ex"] = socket.gethostbyname_ex("backend.staging.svc")[2]
        out["hosts_file"] = socket.gethostbyname("hosts-only.staging.svc")
        print(json.dumps(out))
    """
    seen = last_json(run_app(target(lab), code, tmp_path=tmp_path))
    assert seen["http_client"] == "/http-client"
    assert seen["urllib"] == "/urllib"
    assert seen["raw"] == "/raw"
    # getpeername reports the remote address, not the local relay
    assert seen["peer"] == [lab.backend_addr, 8080]
    # a handed-over socket really lives in staging; a relayed one is local to this host
    expected_local = lab.staging_backend_addr if transport == "fd-passing" else "127.0.0.1"
    assert seen["local"] == expected_local
    assert seen["gethostbyname"] == lab.backend_addr
    assert seen["gethostbyname_ex"] == [lab.backend_addr]
    # staging's /etc/hosts (/etc/netns/NAME/hosts) is honoured
    assert seen["hosts_file"] == lab.backend_addr


#: app code: `path_of(sock, path)` GETs `path` on a connected socket, the path the backend saw
RAW_GET = """
import json, socket
def path_of(s, path):
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\\r\\nHost: b\\r\\nConnection: close\\r\\n\\r\\n")
    raw = b""
    while chunk := s.recv(65536):
        raw += chunk
    return json.loads(raw.split(b"\\r\\n\\r\\n", 1)[1])["path"]
"""


def test_socket_bound_before_connect_keeps_its_port(lab: Lab, tmp_path: Path) -> None:
    # a bound socket cannot take over another socket: it is connected to a relay listener
    code = """
s = socket.socket()
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
s.settimeout(10)
s.connect(("backend.staging.svc", 8080))
out = {"path": path_of(s, "/bound"), "kept_port": s.getsockname()[1] == port}
out["peer"] = list(s.getpeername())
print(json.dumps(out))
"""
    seen = last_json(run_app(target(lab), RAW_GET + code, tmp_path=tmp_path))
    assert seen == {"path": "/bound", "kept_port": True, "peer": [lab.backend_addr, 8080]}


def test_ipv6_socket_reaches_mapped_ipv4_backend(lab: Lab, tmp_path: Path) -> None:
    code = f"""
s = socket.socket(socket.AF_INET6)
s.settimeout(10)
s.connect(("::ffff:{lab.backend_addr}", 8080))
print(json.dumps({{"path": path_of(s, "/mapped"), "peer": list(s.getpeername())}}))
"""
    seen = last_json(run_app(target(lab), RAW_GET + code, tmp_path=tmp_path))
    assert seen == {"path": "/mapped", "peer": [f"::ffff:{lab.backend_addr}", 8080, 0, 0]}


def test_loopback_of_the_target_is_reached(lab: Lab, tmp_path: Path) -> None:
    code = """
        import json, urllib.request
        body = urllib.request.urlopen("http://127.0.0.1:9090/").read().decode()
        print(json.dumps({"body": body}))
    """
    # only a process inside staging can reach staging's own 127.0.0.1:9090
    assert last_json(run_app(target(lab), code, tmp_path=tmp_path))["body"] == "staging-loopback"


def test_udp_leaves_from_staging(lab: Lab, tmp_path: Path) -> None:
    code = """
        import json, socket
        out = {}
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(5)
        u.sendto(b"one", ("backend.staging.svc", 9999))
        data, addr = u.recvfrom(1000)
        out["sendto"] = [data.decode(), list(addr)]
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.settimeout(5)
        c.connect(("127.0.0.1", 9999))
        c.send(b"two")
        out["connected"] = c.recv(1000).decode()
        c.send(b"three")
        data, addr = c.recvfrom(1000)
        out["connected_recvfrom"] = [data.decode(), list(addr)]
        out["peer"] = list(c.getpeername())
        print(json.dumps(out))
    """
    seen = last_json(run_app(target(lab), code, tmp_path=tmp_path))
    assert seen["sendto"] == ["echo:one", [lab.backend_addr, 9999]]
    assert seen["connected"] == "loopback-echo:two"
    # recvfrom on a connected socket names the remote peer, not the relay
    assert seen["connected_recvfrom"] == ["loopback-echo:three", ["127.0.0.1", 9999]]
    assert seen["peer"] == ["127.0.0.1", 9999]


def test_asyncio_and_aiohttp(lab: Lab, tmp_path: Path) -> None:
    code = f"""
        import asyncio, json, aiohttp
        async def main():
            out = {{}}
            r, w = await asyncio.open_connection("backend.staging.svc", 8080)
            w.write(b"GET /asyncio HTTP/1.1\\r\\nHost: b\\r\\nConnection: close\\r\\n\\r\\n")
            raw = await r.read()
            out["asyncio"] = json.loads(raw.split(b"\\r\\n\\r\\n", 1)[1])["path"]
            out["peer"] = list(w.get_extra_info("peername"))
            # an IP literal skips getaddrinfo: the connect itself must be intercepted
            r, w = await asyncio.open_connection("{lab.backend_addr}", 8080)
            w.write(b"GET /literal HTTP/1.1\\r\\nHost: b\\r\\nConnection: close\\r\\n\\r\\n")
            out["literal"] = json.loads((await r.read()).split(b"\\r\\n\\r\\n", 1)[1])["path"]
            async with aiohttp.ClientSession() as s:
                async with s.get("http://backend.staging.svc:8080/aiohttp") as resp:
                    out["aiohttp"] = (await resp.json())["path"]
            print(json.dumps(out))
        asyncio.run(main())
    """
    seen = last_json(run_app(target(lab), code, tmp_path=tmp_path))
    assert seen == {
        "asyncio": "/asyncio",
        "peer": [lab.backend_addr, 8080],
        "literal": "/literal",
        "aiohttp": "/aiohttp",
    }


def test_tls_with_the_staging_ca(lab: Lab, tmp_path: Path) -> None:
    code = f"""
        import json, requests, ssl, socket
        out = {{}}
        out["requests"] = requests.get("https://tls.staging.svc:8443/", verify="{lab.ca_pem}").json()["service"]
        # wrap an intercepted, already connected socket: state is kept by fd
        ctx = ssl.create_default_context(cafile="{lab.ca_pem}")
        raw = socket.create_connection(("tls.staging.svc", 8443))
        tls = ctx.wrap_socket(raw, server_hostname="tls.staging.svc")
        out["peer"] = list(tls.getpeername())
        tls.sendall(b"GET / HTTP/1.1\\r\\nHost: tls.staging.svc\\r\\nConnection: close\\r\\n\\r\\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        out["wrapped"] = json.loads(data.split(b"\\r\\n\\r\\n", 1)[1])["service"]
        print(json.dumps(out))
    """
    seen = last_json(run_app(target(lab), code, tmp_path=tmp_path))
    assert seen == {
        "requests": "backend-tls",
        "peer": [lab.backend_addr, 8443],
        "wrapped": "backend-tls",
    }


def test_no_remote_dns_resolves_locally(lab: Lab, tmp_path: Path) -> None:
    code = """
        import json, socket
        try:
            socket.getaddrinfo("backend.staging.svc", 8080)
            print(json.dumps({"resolved": True}))
        except socket.gaierror as exc:
            print(json.dumps({"resolved": False, "errno": exc.errno}))
    """
    assert last_json(run_app(target(lab), code, tmp_path=tmp_path))["resolved"] is True
    seen = last_json(run_app(target(lab), code, "--no-remote-dns", tmp_path=tmp_path))
    # the name exists only in staging's DNS
    assert seen["resolved"] is False


def test_no_outgoing_keeps_connections_local(lab: Lab, tmp_path: Path) -> None:
    code = f"""
        import json, socket
        try:
            socket.create_connection(("{lab.backend_addr}", 8080), timeout=5).close()
            print(json.dumps({{"connected": True}}))
        except OSError as exc:
            print(json.dumps({{"connected": False, "error": type(exc).__name__}}))
    """
    assert last_json(run_app(target(lab), code, tmp_path=tmp_path))["connected"] is True
    # from this host the backend is unreachable: a local connect must fail
    seen = last_json(run_app(target(lab), code, "--no-outgoing", tmp_path=tmp_path))
    assert seen["connected"] is False
    seen = last_json(run_app(target(lab), code, "--no-tcp-outgoing", tmp_path=tmp_path))
    assert seen["connected"] is False


def test_unix_sockets_stay_local(lab: Lab, tmp_path: Path) -> None:
    code = f"""
        import json, socket, threading
        path = "{tmp_path}/s.sock"
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(path); srv.listen()
        def serve():
            c, _ = srv.accept(); c.sendall(b"local-unix"); c.close()
        threading.Thread(target=serve).start()
        cli = socket.socket(socket.AF_UNIX)
        cli.connect(path)
        print(json.dumps({{"got": cli.recv(100).decode()}}))
    """
    assert last_json(run_app(target(lab), code, tmp_path=tmp_path)) == {"got": "local-unix"}
