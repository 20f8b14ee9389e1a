"""`mirrord.AsyncSession`: every Session method from async code, against the real lab."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import anyio
import httpx
import pytest
import requests

import mirrord
from mirrord.lab import Lab, remote_files

BACKEND = "http://backend.staging.svc:8080"


async def _asgi(scope: dict, receive: object, send: object) -> None:
    body = json.dumps({"who": "asgi", "client": scope["client"][0]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": body})  # type: ignore[operator]


def test_async_session_does_what_the_session_does(lab: Lab) -> None:
    root = Path(remote_files.ROOT)
    found: dict[str, object] = {}

    async def main() -> None:
        async with mirrord.AsyncSession(target=f"netns/{lab.staging_ns}") as s:
            found["env"] = s.env["STAGING_GREETING"]
            found["text"] = await s.read_text(root / "config/app.ini")
            found["bytes"] = await s.read_bytes(root / "secrets/token")
            found["listing"] = sorted(await s.listdir(root))
            found["size"] = (await s.stat(root / "config/settings.json")).st_size
            found["exists"] = (await s.exists(root / "config"), await s.exists(root / "x"))
            found["addresses"] = await s.resolve("db.staging.svc")
            found["get"] = (await s.get(f"{BACKEND}/async")).json()
            found["post"] = (await s.post(f"{BACKEND}/async", content=b"hi")).json()
            found["request"] = (await s.request("DELETE", f"{BACKEND}/x")).json()["method"]
            stream = await s.connect(("backend.staging.svc", 8080))
            async with stream:
                await stream.send(b"GET /stream HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                answer = b""
                async for data in stream:
                    answer += data
            found["stream"] = json.loads(answer.split(b"\r\n\r\n", 1)[1])["path"]
            code = "import os; print(os.environ['SERVICE_NAME'])"
            ran = await s.run([sys.executable, "-c", code], capture_output=True, text=True)
            found["run"] = ran.stdout.strip()

            async with s.mirror(8080, timeout=10) as mirror:
                await anyio.to_thread.run_sync(
                    lambda: requests.get(f"{lab.service_url}/seen?by=async", timeout=10)
                )
                async for request in mirror.http():
                    found["mirrored"] = (request.path, request.query, request.client[0])
                    break
            # a cancelled wait loses nothing: the next reader still gets the request
            async with s.mirror(8080) as mirror:
                with anyio.move_on_after(0.3):
                    async for _ in mirror:
                        raise AssertionError("nothing was sent yet")
                await anyio.to_thread.run_sync(
                    lambda: requests.get(f"{lab.service_url}/after-cancel", timeout=10)
                )
                with anyio.fail_after(10):
                    found["after_cancel"] = (await mirror.http().__anext__()).path

            async with s.steal(8080, handler=_asgi):
                found["stolen"] = await anyio.to_thread.run_sync(
                    lambda: requests.get(lab.service_url, timeout=10).json()
                )
            with s.activate(env=True):
                found["activated"] = os.environ["SERVICE_NAME"]
                found["in_process"] = await anyio.to_thread.run_sync(
                    socket.gethostbyname, "backend.staging.svc"
                )
            with pytest.raises(httpx.ConnectError):
                await s.get("http://nowhere.staging.svc/")

    anyio.run(main)
    assert found == {
        "env": "hello-from-staging",
        "text": remote_files.APP_INI.decode(),
        "bytes": b"staging-token\n",
        "listing": ["config", "data", "secrets"],
        "size": len(json.dumps(remote_files.SETTINGS)),
        "exists": (True, False),
        "addresses": [lab.backend_addr],
        "get": found["get"] | {"path": "/async", "client": lab.staging_backend_addr},
        "post": found["post"] | {"method": "POST", "body": "hi"},
        "request": "DELETE",
        "stream": "/stream",
        "run": "staging-service",
        "mirrored": ("/seen", "by=async", lab.host_addr),
        "after_cancel": "/after-cancel",
        "stolen": {"who": "asgi", "client": lab.host_addr},
        "activated": "staging-service",
        "in_process": lab.backend_addr,
    }
    assert "SERVICE_NAME" not in os.environ


def test_async_session_reports_a_bad_target_as_the_session_does() -> None:
    async def main() -> None:
        async with mirrord.AsyncSession("netns/no-such-namespace"):
            pass

    with pytest.raises(mirrord.TargetNotFound, match="no-such-namespace"):
        anyio.run(main)
