"""Native programs under `mirrord exec`: their connections and name lookups leave from
the staging namespace through the preloaded relay (real curl, wget, redis-cli, psql, nc,
shell scripts; the programs themselves run on this host)."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from helpers import mirrord

from mirrord.lab import Lab


@pytest.fixture(scope="module")
def lab(module_lab: Lab) -> Lab:
    """These tests only send traffic out: they share one lab."""
    return module_lab


def run(lab: Lab, *argv: str, flags: tuple[str, ...] = (), timeout: float = 60):  # type: ignore[no-untyped-def]
    return mirrord("exec", "-t", f"netns/{lab.staging_ns}", *flags, "--", *argv, timeout=timeout)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    )
    assert "warning" not in proc.stderr, proc.stderr
    return proc.stdout


def config(tmp_path: Path, cfg: dict) -> tuple[str, ...]:
    path = tmp_path / "mirrord.json"
    path.write_text(json.dumps(cfg))
    return ("-f", str(path))


@pytest.mark.usefixtures("transport")
def test_curl_and_wget_reach_staging_only_services(lab: Lab) -> None:
    seen = json.loads(ok(run(lab, "curl", "-sf", "http://backend.staging.svc:8080/curl")))
    assert seen["path"] == "/curl"
    # the backend saw the connection come from staging, not from this host
    assert seen["client"] == lab.staging_backend_addr
    seen = json.loads(ok(run(lab, "wget", "-qO-", "http://backend.staging.svc:8080/wget")))
    assert (seen["path"], seen["client"]) == ("/wget", lab.staging_backend_addr)
    # the target's own loopback
    assert ok(run(lab, "curl", "-sf", "http://127.0.0.1:9090/")) == "staging-loopback"


def test_unknown_name_fails_as_the_target_resolves_it(lab: Lab) -> None:
    proc = run(lab, "curl", "-s", "http://nowhere.staging.svc:8080/")
    assert proc.returncode == 6  # curl: could not resolve host
    assert "mirrord:" not in proc.stderr


@pytest.mark.usefixtures("transport")
def test_redis_cli(lab: Lab, redis_in_staging: str) -> None:
    out = ok(run(lab, "redis-cli", "-h", redis_in_staging, "get", "greeting"))
    assert out.strip() == "hello-from-redis"


@pytest.mark.usefixtures("transport")
def test_psql(lab: Lab, postgres_in_staging: str) -> None:
    argv = ["psql", "-h", postgres_in_staging, "-U", "app", "-d", "postgres", "-tAc"]
    assert ok(run(lab, *argv, "select name from pets")).strip() == "rex"


@pytest.mark.usefixtures("transport")
def test_nc_udp(lab: Lab) -> None:
    out = ok(run(lab, "sh", "-c", "echo one | nc -u -w 1 backend.staging.svc 9999"))
    assert out.strip() == "echo:one"


def test_shell_script_and_its_children(lab: Lab, redis_in_staging: str, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text(
        textwrap.dedent(
            """\
            #!/bin/sh
            set -e
            curl -sf http://backend.staging.svc:8080/script; echo
            # a child whose environment was cleared is intercepted all the same
            env -i /usr/bin/wget -qO- http://backend.staging.svc:8080/cleared; echo
            redis-cli -h redis.staging.svc get greeting
            echo two | nc -u -w 1 backend.staging.svc 9999
            # a Python of another installation, env cleared too: the layer and relay load
            env -i /usr/bin/python3 -c 'import urllib.request as u; print(u.urlopen("http://backend.staging.svc:8080/py").read().decode()); print(open("/srv/app/secrets/token").read().strip())'
            """
        )
    )
    script.chmod(0o755)
    lines = ok(run(lab, str(script))).splitlines()
    assert json.loads(lines[0])["path"] == "/script"
    assert json.loads(lines[1])["path"] == "/cleared"
    assert lines[2] == "hello-from-redis"
    assert lines[3] == "echo:two"
    assert json.loads(lines[4])["client"] == lab.staging_backend_addr
    assert lines[5] == "staging-token"  # the target's file: the Python layer loaded


def test_skip_processes_leaves_named_programs_alone(lab: Lab, tmp_path: Path) -> None:
    flags = config(tmp_path, {"skip_processes": ["wget"]})
    script = (
        "curl -sf http://backend.staging.svc:8080/kept; echo;"
        " wget -qO- http://backend.staging.svc:8080/skipped || echo wget-not-intercepted"
    )
    lines = ok(run(lab, "sh", "-c", script, flags=flags)).splitlines()
    assert json.loads(lines[0])["path"] == "/kept"
    # wget resolved on this host, where the staging name does not exist
    assert lines[1] == "wget-not-intercepted"


def test_outgoing_filter_means_the_same_for_curl_and_python(lab: Lab, tmp_path: Path) -> None:
    # only connections to the backend's name go through the target
    flags = config(
        tmp_path,
        {"feature": {"network": {"outgoing": {"filter": {"remote": ["backend.staging.svc"]}}}}},
    )
    out = ok(run(lab, "curl", "-sf", "http://backend.staging.svc:8080/named", flags=flags))
    assert json.loads(out)["path"] == "/named"
    # the target's loopback is not in the filter: curl connects here, where nothing listens
    assert run(lab, "curl", "-s", "http://127.0.0.1:9090/", flags=flags).returncode == 7
    code = textwrap.dedent(
        """\
        import json, urllib.request
        out = [json.loads(urllib.request.urlopen("http://backend.staging.svc:8080/py").read())["path"]]
        try:
            urllib.request.urlopen("http://127.0.0.1:9090/", timeout=5)
            out.append("reached")
        except OSError as exc:
            out.append(type(exc.reason).__name__)
        print(json.dumps(out))
        """
    )
    (tmp_path / "app.py").write_text(code)
    proc = mirrord("-t", f"netns/{lab.staging_ns}", *flags, str(tmp_path / "app.py"))
    assert json.loads(ok(proc).splitlines()[-1]) == ["/py", "ConnectionRefusedError"]


def test_programs_that_cannot_take_the_relay_warn_and_run(tmp_path: Path) -> None:
    source = tmp_path / "hello.c"
    source.write_text('#include <stdio.h>\nint main(void) { puts("ran"); return 3; }\n')
    static, setuid = tmp_path / "static", tmp_path / "setuid"
    subprocess.run(["cc", "-static", "-o", str(static), str(source)], check=True)
    subprocess.run(["cc", "-o", str(setuid), str(source)], check=True)
    os.chmod(setuid, 0o4755)
    for program, why in ((static, "statically linked"), (setuid, "set-uid")):
        proc = mirrord("exec", "-t", "targetless", "--", str(program))
        assert (proc.returncode, proc.stdout) == (3, "ran\n")
        warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
        assert warnings == [
            f"mirrord: warning: {program} is {why}: it cannot be intercepted and runs unmodified"
        ]


@pytest.mark.usefixtures("transport")
def test_a_c_client_under_asan(
    lab: Lab, native_client: Path, relay_builds: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every hooked call the way C programs make them, the relay built with
    AddressSanitizer (a memory error ends the program with exit code 99)."""
    monkeypatch.setenv("MIRRORD_RELAY_LIBRARY", str(relay_builds["asan"]))
    monkeypatch.setenv("ASAN_OPTIONS", "detect_leaks=0:verify_asan_link_order=0:exitcode=99")
    proc = run(lab, str(native_client), "backend.staging.svc", lab.backend_addr)
    backend = f"{lab.backend_addr}"
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    lines = proc.stdout.splitlines()
    assert sorted(lines) == sorted(
        [
            "tcp_body ok",
            f"tcp_peer {backend}:8080",
            "dup_peers 127.0.0.1:9090 127.0.0.1:9090 127.0.0.1:9090",
            "loopback_body staging-loopback",
            f"gethostbyname {backend}",
            f"udp_recvfrom echo:one from {backend}:9999",
            f"udp_recvmsg echo:two from {backend}:9999",
            "threads ok",
            "fork_child ok",
            # the child exec'd with an environment of one variable: still intercepted
            "tcp_body ok",
            f"tcp_peer {backend}:8080",
            "child_exit 0",
        ]
    ), proc.stdout
