"""The target's environment, children and forks, and what is left after the app exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from helpers import REPO, agent_pids, last_json, processes_mentioning, run_app, wait_gone

from mirrord.lab import Lab


def target(lab: Lab) -> str:
    return f"netns/{lab.staging_ns}"


ENV_CODE = """
    import json, os
    keys = ["STAGING_GREETING", "DATABASE_URL", "SECRET_TOKEN", "SERVICE_NAME"]
    print(json.dumps({k: os.environ.get(k) for k in keys} | {"PATH_LOCAL": os.environ["PATH"] == os.environ.get("EXPECTED_PATH")}))
"""


def test_env_of_the_target_process(lab: Lab, tmp_path: Path) -> None:
    seen = last_json(run_app(target(lab), ENV_CODE, tmp_path=tmp_path))
    assert seen["STAGING_GREETING"] == "hello-from-staging"
    assert seen["DATABASE_URL"] == "postgres://db.staging.svc:5432/app"
    assert seen["SECRET_TOKEN"] == "s3cr3t"


def test_env_exclude_and_include(lab: Lab, tmp_path: Path) -> None:
    seen = last_json(
        run_app(target(lab), ENV_CODE, "-x", "SECRET_*;DATABASE_URL", tmp_path=tmp_path)
    )
    assert seen["STAGING_GREETING"] == "hello-from-staging"
    assert seen["SECRET_TOKEN"] is None
    assert seen["DATABASE_URL"] is None
    seen = last_json(run_app(target(lab), ENV_CODE, "-s", "STAGING_*", tmp_path=tmp_path))
    assert seen["STAGING_GREETING"] == "hello-from-staging"
    assert seen["SECRET_TOKEN"] is None
    assert seen["SERVICE_NAME"] is None


def test_remote_path_does_not_replace_local_path(lab: Lab, tmp_path: Path) -> None:
    # mirrord leaves PATH (and HOME...) local by default
    os.environ["EXPECTED_PATH"] = os.environ["PATH"]
    try:
        seen = last_json(run_app(target(lab), ENV_CODE, tmp_path=tmp_path))
    finally:
        del os.environ["EXPECTED_PATH"]
    assert seen["PATH_LOCAL"] is True


def test_children_and_forks_are_intercepted(lab: Lab, tmp_path: Path) -> None:
    code = """
        import json, os, subprocess, sys, urllib.request
        url = "http://backend.staging.svc:8080/"
        child = subprocess.run([sys.executable, "-c",
            f"import urllib.request, json; print(json.loads(urllib.request.urlopen('{url}child').read())['path'])"],
            capture_output=True, text=True)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            path = json.loads(urllib.request.urlopen(url + "forked").read())["path"]
            os.write(w, path.encode()); os._exit(0)
        os.close(w)
        forked = os.read(r, 100).decode()
        os.waitpid(pid, 0)
        parent = json.loads(urllib.request.urlopen(url + "parent").read())["path"]
        print(json.dumps({"child": child.stdout.strip(), "forked": forked, "parent": parent, "err": child.stderr}))
    """
    seen = last_json(run_app(target(lab), code, tmp_path=tmp_path))
    assert seen["child"] == "/child", seen["err"]
    assert seen["forked"] == "/forked"
    assert seen["parent"] == "/parent"


def test_nothing_left_running_after_exit(lab: Lab, tmp_path: Path) -> None:
    code = """
        import json, os
        print(json.dumps({"session": os.path.dirname(os.environ["MIRRORD_INTPROXY_SOCKET"])}))
    """
    session = last_json(run_app(target(lab), code, tmp_path=tmp_path))["session"]
    assert wait_gone(session) == []
    assert not Path(session).exists()  # the session's folder went with it
    # the target's agent leaves once its last session has been gone for its idle timeout
    deadline = time.monotonic() + 15
    while agent_pids(target(lab)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert agent_pids(target(lab)) == []


def _start_looping_app(lab: Lab, tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    """An app that fetches from the backend once a second and reports each outcome."""
    script = tmp_path / "loop.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, time, urllib.request
            print("session", os.path.dirname(os.environ["MIRRORD_INTPROXY_SOCKET"]), flush=True)
            for _ in range(60):
                try:
                    urllib.request.urlopen("http://backend.staging.svc:8080/", timeout=20).read()
                    print("ok", flush=True)
                except Exception as exc:
                    print("error", type(exc).__name__, exc, flush=True)
                    sys.exit(3)
                time.sleep(0.2)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirrord", "-t", target(lab), str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline().split()
    assert first and first[0] == "session", proc.stderr.read() if proc.stderr else ""
    assert proc.stdout.readline().strip() == "ok"
    return proc, first[1]


def _kill(pids: list[int]) -> None:
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def test_killed_agent_gives_the_app_an_error(lab: Lab, tmp_path: Path, transport: str) -> None:
    proc, session = _start_looping_app(lab, tmp_path)
    _kill(agent_pids(target(lab)))
    started = time.monotonic()
    out, err = proc.communicate(timeout=30)
    # an error, promptly, not a hang
    assert proc.returncode == 3, (out, err)
    assert "error" in out
    assert time.monotonic() - started < 15
    assert wait_gone(session) == []


def test_killed_intproxy_gives_the_app_an_error(lab: Lab, tmp_path: Path, transport: str) -> None:
    proc, session = _start_looping_app(lab, tmp_path)
    _kill(processes_mentioning(session))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, (out, err)
    assert "error" in out
    # the orphaned agent notices its client is gone and exits
    assert wait_gone(session) == []


def test_intproxy_refuses_strangers_and_keeps_serving(lab: Lab, tmp_path: Path) -> None:
    code = """
        import json, os, socket, struct, urllib.request
        import msgpack
        path = os.environ["MIRRORD_INTPROXY_SOCKET"]
        def talk(payload):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(5)
            s.connect(path)
            s.sendall(payload)
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except OSError:
                pass
            s.close()
            if len(data) < 4:
                return None
            return msgpack.unpackb(data[4:4 + struct.unpack(">I", data[:4])[0]])
        hello = msgpack.packb({"t": "hello", "version": 1, "token": "guess", "client": "x"})
        out = {
            "wrong_token": talk(struct.pack(">I", len(hello)) + hello),
            "garbage": talk(b"\\x00\\x00\\x00\\x05hello"),
            "http": talk(b"GET / HTTP/1.1\\r\\n\\r\\n"),
        }
        out["still_works"] = json.loads(urllib.request.urlopen("http://backend.staging.svc:8080/").read())["service"]
        print(json.dumps(out))
    """
    seen = last_json(run_app(target(lab), code, tmp_path=tmp_path))
    assert seen["wrong_token"]["t"] == "error" and seen["wrong_token"]["code"] == "auth"
    assert seen["garbage"]["t"] == "error"
    assert seen["http"]["t"] == "error"  # "GET " read as a length: far above the frame limit
    assert seen["still_works"] == "backend"
