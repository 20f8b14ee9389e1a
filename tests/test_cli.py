"""The CLI as a user meets it: targets, options, config files, errors as one line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import last_json, loopback_http_server, mirrord, run_app

from mirrord import __version__ as mirrord_version
from mirrord.lab import Lab


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_unknown_target_kind(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("print('hi')")
    line = one_line_error(mirrord("-t", "foo/bar", str(tmp_path / "app.py")))
    assert line.startswith("mirrord: ") and "foo/bar" in line


def test_missing_namespace(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("print('hi')")
    line = one_line_error(mirrord("-t", "netns/no-such-ns", str(tmp_path / "app.py")))
    assert "no-such-ns" in line and "no such network namespace" in line


def test_missing_script() -> None:
    line = one_line_error(mirrord("-t", "targetless", "/nonexistent/app.py"))
    assert "no such script" in line


def test_bad_config_file_names_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "mirrord.json"
    config.write_text('{\n  "feature": {\n    "network": {"outgoing": {"tcp": "yes"}}\n  }\n}\n')
    (tmp_path / "app.py").write_text("print('hi')")
    line = one_line_error(mirrord("-f", str(config), str(tmp_path / "app.py")))
    assert "mirrord.json:3" in line
    assert "feature.network.outgoing.tcp" in line


def test_unimplemented_keys_are_named_in_a_warning(tmp_path: Path) -> None:
    config = tmp_path / "mirrord.json"
    config.write_text(json.dumps({"target": "targetless", "feature": {"copy_target": True}}))
    (tmp_path / "app.py").write_text("print('ran')")
    proc = mirrord("-f", str(config), str(tmp_path / "app.py"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ran"
    assert "feature.copy_target" in proc.stderr and "not implemented" in proc.stderr


def test_exit_code_and_args_are_the_programs_own(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("import sys; print(sys.argv[1:]); sys.exit(7)")
    proc = mirrord("-t", "targetless", str(tmp_path / "app.py"), "--flag", "x y")
    assert proc.returncode == 7
    assert proc.stdout.strip() == "['--flag', 'x y']"


def test_module_mode(lab: Lab, tmp_path: Path) -> None:
    (tmp_path / "probe_mod.py").write_text(
        "import json, os, socket\n"
        "print(json.dumps({'addr': socket.gethostbyname('backend.staging.svc'),"
        " 'greeting': os.environ.get('STAGING_GREETING')}))\n"
    )
    proc = mirrord(
        "-t", f"netns/{lab.staging_ns}", "-m", "probe_mod", env={"PYTHONPATH": str(tmp_path)}
    )
    assert last_json(proc) == {"addr": lab.backend_addr, "greeting": "hello-from-staging"}


def test_exec_python_and_other_programs(lab: Lab) -> None:
    code = "import socket; print(socket.gethostbyname('backend.staging.svc'))"
    proc = mirrord("exec", "-t", f"netns/{lab.staging_ns}", "--", sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == lab.backend_addr
    # any other program gets the environment, and its traffic goes through the native relay
    script = "echo $STAGING_GREETING; curl -s http://127.0.0.1:9090/"
    proc = mirrord("exec", "-t", f"netns/{lab.staging_ns}", "--", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["hello-from-staging", "staging-loopback"]
    assert proc.stderr == ""
    # without the relay (not built: no C compiler at install) it says so, and runs
    proc = mirrord(
        "exec", "-t", f"netns/{lab.staging_ns}", "--", "sh", "-c", "echo $STAGING_GREETING",
        env={"MIRRORD_RELAY_LIBRARY": "none"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "hello-from-staging"
    assert proc.stderr.splitlines() == [
        "mirrord: warning: the native relay is not built (no C compiler when mirrord was "
        "installed): sh gets the target's environment, but its traffic is not intercepted"
    ]


def test_pid_target(lab: Lab, tmp_path: Path) -> None:
    code = """
        import json, os, urllib.request
        body = urllib.request.urlopen("http://127.0.0.1:9090/").read().decode()
        print(json.dumps({"body": body, "service": os.environ.get("SERVICE_NAME")}))
    """
    seen = last_json(run_app(f"pid/{lab.service_pid}", code, tmp_path=tmp_path))
    assert seen == {"body": "staging-loopback", "service": "staging-service"}


@pytest.fixture
def local_http_server() -> Iterator[int]:
    """A server on this host's loopback that answers `local-host`."""
    with loopback_http_server(lambda request: "local-host") as port:
        yield port


def test_ignore_localhost_and_outgoing_filter(
    lab: Lab, tmp_path: Path, local_http_server: int
) -> None:
    code = f"""
        import json, socket, urllib.request
        out = {{}}
        try:
            out["local"] = urllib.request.urlopen("http://127.0.0.1:{local_http_server}/", timeout=5).read().decode()
        except OSError as exc:
            out["local"] = type(exc).__name__
        try:
            out["backend"] = json.loads(urllib.request.urlopen("http://backend.staging.svc:8080/", timeout=5).read())["service"]
        except OSError as exc:
            out["backend"] = "unreachable"
        print(json.dumps(out))
    """
    # by default 127.0.0.1 is the target's loopback, where nothing listens on that port
    seen = last_json(run_app(f"netns/{lab.staging_ns}", code, tmp_path=tmp_path))
    assert seen == {"local": "URLError", "backend": "backend"}
    config = tmp_path / "mirrord.toml"
    config.write_text("[feature.network.outgoing]\nignore_localhost = true\n")
    seen = last_json(run_app(f"netns/{lab.staging_ns}", code, "-f", str(config), tmp_path=tmp_path))
    assert seen == {"local": "local-host", "backend": "backend"}
    # a `local` filter entry keeps the backend's subnet local, where it is unreachable
    config = tmp_path / "mirrord.yaml"
    config.write_text(
        f"feature:\n  network:\n    outgoing:\n      filter:\n        local: ['{lab.backend_addr}/30']\n"
    )
    seen = last_json(run_app(f"netns/{lab.staging_ns}", code, "-f", str(config), tmp_path=tmp_path))
    assert seen["backend"] == "unreachable"


def test_sitecustomize_chain_keeps_the_apps_own(lab: Lab, tmp_path: Path) -> None:
    hook = tmp_path / "own"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text("import builtins\nbuiltins.OWN_SITECUSTOMIZE = True\n")
    (tmp_path / "app.py").write_text(
        "import builtins, json, socket\n"
        "print(json.dumps({'own': getattr(builtins, 'OWN_SITECUSTOMIZE', False),"
        " 'addr': socket.gethostbyname('backend.staging.svc')}))\n"
    )
    proc = mirrord(
        "-t", f"netns/{lab.staging_ns}", str(tmp_path / "app.py"), env={"PYTHONPATH": str(hook)}
    )
    assert last_json(proc) == {"own": True, "addr": lab.backend_addr}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--bogus", "app.py"], "no such option: --bogus"),
        (["-t"], "requires an argument"),
        (["exec"], "Missing argument"),
        (["-f", "/nonexistent/mirrord.json", "app.py"], "no such file"),
    ],
)
def test_bad_command_lines_get_a_clear_error(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    (tmp_path / "app.py").write_text("print('must not run')")
    args = [str(tmp_path / a) if a == "app.py" else a for a in args]
    proc = mirrord(*args)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "must not run" not in proc.stdout
    assert expected in proc.stderr


def test_agent_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    # a zombie still has a /proc entry but no namespaces left to enter
    zombie = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{zombie.pid}/ns/net").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        (tmp_path / "app.py").write_text("print('must not run')")
        proc = mirrord("-t", f"pid/{zombie.pid}", str(tmp_path / "app.py"))
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr and "must not run" not in proc.stdout
        assert "the agent failed to start" in proc.stderr
        assert f"/proc/{zombie.pid}/" in proc.stderr  # its log's last lines, quoted
    finally:
        zombie.wait()


def test_version() -> None:
    proc = mirrord("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"mirrord {mirrord_version}"


@pytest.mark.parametrize(
    ("program", "reason"),
    [
        (["python3", "-S", "-c", "import time; time.sleep(5)"], "-S skips site"),
        (["python3", "-I", "-c", "import time; time.sleep(5)"], "-I ignores PYTHONPATH"),
    ],
)
def test_a_program_whose_layer_never_connects_gets_one_warning(
    program: list[str], reason: str
) -> None:
    # without the native relay (not built), nothing of such a program reaches the intproxy
    proc = mirrord("exec", "--", *program, env={"MIRRORD_RELAY_LIBRARY": "none"})
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "no mirrord layer connected" in line]
    assert len(warnings) == 1, proc.stderr
    assert reason in warnings[0]
    # with it, the relay is its layer: its traffic does go through the target
    proc = mirrord("exec", "--", *program)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_a_program_that_is_not_python_is_warned_about_once() -> None:
    proc = mirrord("exec", "--", "sh", "-c", "sleep 4", env={"MIRRORD_RELAY_LIBRARY": "none"})
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert "sh gets the target's environment, but its traffic is not intercepted" in line
    # with the native relay it is intercepted: nothing to say
    proc = mirrord("exec", "--", "sh", "-c", "sleep 4")
    assert (proc.returncode, proc.stderr) == (0, "")


def test_a_python_program_with_its_layer_gets_no_warning() -> None:
    proc = mirrord("exec", "--", sys.executable, "-c", "import time; time.sleep(5)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
