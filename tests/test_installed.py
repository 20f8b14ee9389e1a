"""mirrord as users install it: a wheel in a fresh virtualenv, run from a folder of the
user's own, not from this checkout (where a missing file would go unnoticed).

The virtualenvs install offline from the wheelhouse that scripts/setup fills (the
dependencies of pyproject.toml), so the tests themselves reach nothing but the lab.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from helpers import REPO

from mirrord.lab import Lab

WHEELHOUSE = Path(os.environ.get("MIRRORD_WHEELHOUSE", Path.home() / ".cache/mirrord-wheelhouse"))

APP = """
    import json, os, socket, urllib.request
    body = urllib.request.urlopen("http://backend.staging.svc:8080/installed", timeout=10).read()
    print(json.dumps({
        "path": json.loads(body)["path"],
        "client": json.loads(body)["client"],
        "address": socket.gethostbyname("backend.staging.svc"),
        "greeting": os.environ.get("STAGING_GREETING"),
        "cwd": os.getcwd(),
    }))
"""

SERVER = """
    import http.server, json, os
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            reply = json.dumps({"who": "local-app", "client": self.client_address[0],
                                "body": body.decode()}).encode()
            os.write(1, reply + b"\\n")
            self.send_response(200); self.send_header("Content-Length", str(len(reply)))
            self.end_headers(); self.wfile.write(reply)
        def log_message(self, *a): pass
    srv = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H)
    print("ready", flush=True)
    srv.serve_forever()
"""


def _pip_offline(python: Path, *args: str) -> None:
    if not any(WHEELHOUSE.glob("*.whl")):
        pytest.fail(f"no wheelhouse at {WHEELHOUSE}: run scripts/setup, which fills it")
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(WHEELHOUSE)]
        + list(args),
        capture_output=True,
        text=True,
        env=_clean_env(),  # a PYTHONPATH would show pip this checkout as installed already
    )
    assert proc.returncode == 0, f"offline install failed (run scripts/setup?):\n{proc.stderr}"


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
        cwd=build,
    )
    (built,) = out.glob("mirrord_py-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh virtualenv with the wheel installed (and the agent's extra)."""
    bin_dir = _venv(tmp_path_factory.mktemp("venv") / "mirrord")
    _pip_offline(bin_dir / "python", f"{wheel}[agent]")
    return bin_dir


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """Where a user keeps their project: nowhere near this checkout."""
    folder = tmp_path / "my-project"
    folder.mkdir()
    (folder / "app.py").write_text(textwrap.dedent(APP))
    (folder / "server.py").write_text(textwrap.dedent(SERVER))
    return folder


def _clean_env() -> dict[str, str]:
    # nothing of the checkout may leak in: no PYTHONPATH, no MIRRORD_ variables
    return {
        k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("MIRRORD_")
    }


def _run(argv: list[str], cwd: Path, timeout: float = 60) -> dict:
    proc = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_clean_env()
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "warning" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_went_through_staging(lab: Lab, seen: dict, folder: Path) -> None:
    assert seen["path"] == "/installed"
    assert seen["client"] == lab.staging_backend_addr  # the connection left from staging
    assert seen["address"] == lab.backend_addr  # the name resolved as staging resolves it
    assert seen["greeting"] == "hello-from-staging"  # the target's environment
    assert seen["cwd"] == str(folder)


def test_wheel_contents(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "mirrord/_hook/sitecustomize.py" in names
    assert not any(n.startswith(("tests/", "sitecustomize_hook/")) for n in names)


def test_installed_wheel_runs_an_app_from_the_users_folder(
    lab: Lab, installed: Path, user_folder: Path
) -> None:
    target = f"netns/{lab.staging_ns}"
    for argv in (
        [str(installed / "mirrord"), "-t", target, "app.py"],
        [str(installed / "python"), "-m", "mirrord", "-t", target, "app.py"],
        [
            str(installed / "mirrord"),
            "exec",
            "-t",
            target,
            "--",
            str(installed / "python"),
            "app.py",
        ],
    ):
        _assert_went_through_staging(lab, _run(argv, user_folder), user_folder)


def test_an_app_of_another_virtualenv_without_mirrord(
    lab: Lab, installed: Path, user_folder: Path, tmp_path: Path
) -> None:
    app_bin = _venv(tmp_path / "app-venv")  # the app's own environment: no mirrord in it
    probe = subprocess.run(
        [str(app_bin / "python"), "-c", "import mirrord"],
        capture_output=True,
        cwd=user_folder,
        env=_clean_env(),
    )
    assert probe.returncode != 0
    seen = _run(
        [str(installed / "mirrord"), "exec", "-t", f"netns/{lab.staging_ns}", "--"]
        + [str(app_bin / "python"), "app.py"],
        user_folder,
    )
    _assert_went_through_staging(lab, seen, user_folder)


class _Server:
    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_clean_env(),
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            raise AssertionError(f"server did not start: {line!r} {self.proc.stderr.read()}")  # type: ignore[union-attr]

    def next_request(self, timeout: float = 15) -> dict:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("{"):
                return json.loads(line)
        raise AssertionError("the local app saw no request")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def server(installed: Path, user_folder: Path) -> Iterator:
    servers: list[_Server] = []

    def start(*flags: str) -> _Server:
        servers.append(_Server([str(installed / "mirrord"), *flags, "server.py"], user_folder))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def test_installed_wheel_mirrors_and_steals(lab: Lab, server) -> None:  # type: ignore[no-untyped-def]
    url = f"http://{lab.staging_addr}:8080/"
    mirrored = server("-t", f"netns/{lab.staging_ns}")
    assert requests.post(url, data="copy-me", timeout=10).text == "staging-service"
    assert mirrored.next_request()["body"] == "copy-me"
    mirrored.stop()
    server("-t", f"netns/{lab.staging_ns}", "--steal")
    answer = requests.post(url, data="take-me", timeout=10).json()
    assert answer == {"who": "local-app", "client": lab.host_addr, "body": "take-me"}


@pytest.mark.parametrize("tool", ["uv", "pipx"])
def test_installed_as_a_tool(
    lab: Lab, wheel: Path, user_folder: Path, tmp_path: Path, tool: str
) -> None:
    home = tmp_path / tool
    env = {
        **_clean_env(),
        "UV_TOOL_DIR": str(home / "tools"),
        "UV_TOOL_BIN_DIR": str(home / "bin"),
        "UV_CACHE_DIR": str(home / "cache"),
        "PIPX_HOME": str(home / "pipx"),
        "PIPX_BIN_DIR": str(home / "bin"),
    }
    if tool == "uv":
        argv = ["uv", "tool", "install", "--offline", "--no-index", "--find-links"]
        argv += [str(WHEELHOUSE), str(wheel)]
    else:
        argv = [sys.executable, "-m", "pipx", "install", "--pip-args"]
        argv += [f"--no-index --find-links {WHEELHOUSE}", str(wheel)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    tool_mirrord = str(home / "bin" / "mirrord")
    # the tool's own environment has no lab dependencies: the app runs on this machine's python
    seen = _run(
        [tool_mirrord, "exec", "-t", f"netns/{lab.staging_ns}", "--", sys.executable, "app.py"],
        user_folder,
    )
    _assert_went_through_staging(lab, seen, user_folder)
