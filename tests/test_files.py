"""Remote files: the app reads (and in write mode changes) the target's files, by policy.

The staging service has a tmpfs on /srv in its own mount namespace (mirrord/lab/
remote_files.py): /srv/app/... exists only there. Everything runs through the real CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO, last_json, mirrord, run_app

from mirrord.agent.files import check_path
from mirrord.client.proxy import ProxyClient
from mirrord.config import load_config
from mirrord.lab import Lab
from mirrord.lab import remote_files as rf
from mirrord.protocol import (
    FileClose,
    FileData,
    FileDone,
    FileEntries,
    FileListDir,
    FileOpen,
    FileOpened,
    FileRead,
    RequestFailed,
)
from mirrord.protocol.files import MAX_FILE_CHUNK
from mirrord.settings.contract import LayerSettings


def target(lab: Lab) -> str:
    return f"netns/{lab.staging_ns}"


def fs_config(tmp_path: Path, fs: object) -> tuple[str, str]:
    """`-f mirrord.json` flags with this feature.fs."""
    path = tmp_path / "mirrord.json"
    path.write_text(json.dumps({"feature": {"fs": fs}}))
    return "-f", str(path)


def in_target(lab: Lab, *argv: str) -> str:
    """Run a command where the staging service runs (its mount namespace): its view."""
    proc = lab.run_in_service(list(argv))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# ------------------------------------------------------------------------ reading


def test_reads_stats_and_lists_remote_files(lab: Lab, tmp_path: Path) -> None:
    code = """
        import configparser, json, os, pathlib
        root = "/srv/app"
        out = {}
        out["text"] = open(f"{root}/config/settings.yaml").read()
        with open(f"{root}/config/settings.yaml", "rb") as f:
            out["binary"] = f.read().decode()
            out["name"] = f.name
        out["json"] = json.load(open(f"{root}/config/settings.json"))
        ini = configparser.ConfigParser()
        out["ini_read"] = ini.read(f"{root}/config/app.ini")
        out["ini"] = ini["database"]["url"]
        p = pathlib.Path(root, "config")
        out["pathlib"] = [
            (p / "settings.yaml").read_text() == out["text"],
            (p / "settings.json").exists(), p.is_dir(), (p / "app.ini").is_file(),
            (p / "nope").exists(), (p / "current.yaml").is_symlink(),
        ]
        out["iterdir"] = sorted(x.name for x in p.iterdir())
        out["rglob"] = sorted(str(x) for x in pathlib.Path(root).rglob("*.txt"))
        out["listdir"] = sorted(os.listdir(f"{root}/config"))
        out["listdir_bytes"] = sorted(n.decode() for n in os.listdir(f"{root}/config".encode()))
        with os.scandir(f"{root}/config") as it:
            entries = {e.name: e for e in it}
        out["scandir"] = {
            name: [e.is_dir(), e.is_file(), e.is_symlink(), e.path]
            for name, e in entries.items()
        }
        out["entry_stat"] = entries["app.ini"].stat().st_size
        out["walk"] = [(d, sorted(ds), sorted(fs)) for d, ds, fs in os.walk(root)]
        st = os.stat(f"{root}/config/settings.json")
        out["stat"] = [st.st_size, oct(st.st_mode)[-3:], type(st.st_mtime).__name__]
        out["lstat_is_link"] = oct(os.lstat(f"{root}/config/current.yaml").st_mode)[:4]
        out["getsize"] = os.path.getsize(f"{root}/data/big.bin")
        out["readlink"] = os.readlink(f"{root}/config/current.yaml")
        out["realpath"] = os.path.realpath(f"{root}/config/current.yaml")
        out["via_link"] = open(f"{root}/config/current.yaml").read() == out["text"]
        out["access"] = [os.access(f"{root}/config/app.ini", os.R_OK),
                         os.access(f"{root}/config/app.ini", os.X_OK),
                         os.access(f"{root}/nope", os.F_OK)]
        out["dotdot"] = open(f"{root}/config/../config/./app.ini").read() == open(f"{root}/config/app.ini").read()
        out["os_open"] = os.read(os.open(f"{root}/secrets/token", os.O_RDONLY), 100).decode()
        # /etc/hosts is read from the target by default (mirrord's read_remote_by_default)
        out["hosts"] = "hosts-only.staging.svc" in open("/etc/hosts").read()
        # and the app's own script is local
        out["script"] = "configparser" in open(__file__).read()
        print(json.dumps(out))
    """
    seen = last_json(run_app(target(lab), code, tmp_path=tmp_path))
    text = rf.SETTINGS_YAML.decode()
    assert seen["text"] == text and seen["binary"] == text
    assert seen["name"] == "/srv/app/config/settings.yaml"
    assert seen["json"] == rf.SETTINGS
    assert seen["ini_read"] == ["/srv/app/config/app.ini"]
    assert seen["ini"] == "postgres://db.staging.svc:5432/app"
    assert seen["pathlib"] == [True, True, True, True, False, True]
    config = ["app.ini", "current.yaml", "dangling", "nested", "settings.json", "settings.yaml"]
    assert seen["iterdir"] == seen["listdir"] == seen["listdir_bytes"] == config
    assert seen["rglob"] == ["/srv/app/config/nested/deep/secret.txt"]
    assert seen["scandir"]["nested"] == [True, False, False, "/srv/app/config/nested"]
    assert seen["scandir"]["app.ini"][:3] == [False, True, False]
    assert seen["scandir"]["current.yaml"][:3] == [False, True, True]
    assert seen["scandir"]["dangling"][:3] == [False, False, True]
    assert seen["entry_stat"] == len(rf.APP_INI)
    walk = {d: (ds, fs) for d, ds, fs in seen["walk"]}
    assert walk["/srv/app"] == (["config", "data", "secrets"], [])
    assert walk["/srv/app/config/nested/deep"] == ([], ["secret.txt"])
    assert walk["/srv/app/data"] == ([], ["app.sqlite3", "big.bin"])
    assert seen["stat"] == [len(json.dumps(rf.SETTINGS)), "644", "float"]
    assert seen["lstat_is_link"] == "0o12"
    assert seen["getsize"] == rf.BIG_SIZE
    assert seen["readlink"] == "settings.yaml"
    assert seen["realpath"] == "/srv/app/config/settings.yaml"
    assert seen["via_link"] and seen["dotdot"]
    assert seen["access"] == [True, False, False]
    assert seen["os_open"] == "staging-token\n"
    assert seen["hosts"] and seen["script"]
    # none of it is on this host
    assert not Path("/srv/app").exists()
    assert in_target(lab, "cat", "/srv/app/config/app.ini") == rf.APP_INI.decode()


def test_remote_errors_are_the_errnos_of_local_calls(lab: Lab, tmp_path: Path) -> None:
    code = """
        import errno, json, os
        out = {}
        def err(fn, *args):
            try:
                fn(*args)
            except OSError as exc:
                return [type(exc).__name__, errno.errorcode[exc.errno], exc.filename]
            return "no error"
        out["open_missing"] = err(open, "/srv/app/missing.yaml")
        out["open_dir"] = err(open, "/srv/app/config")
        out["open_under_file"] = err(open, "/srv/app/config/app.ini/x")
        out["stat_missing"] = err(os.stat, "/srv/app/missing")
        out["listdir_file"] = err(os.listdir, "/srv/app/config/app.ini")
        out["listdir_missing"] = err(os.listdir, "/srv/app/nowhere")
        out["readlink_file"] = err(os.readlink, "/srv/app/config/app.ini")
        out["scandir_missing"] = err(os.scandir, "/srv/app/nowhere")
        out["dangling"] = [os.path.exists("/srv/app/config/dangling"),
                           os.path.lexists("/srv/app/config/dangling")]
        print(json.dumps(out))
    """
    seen = last_json(run_app(target(lab), code, tmp_path=tmp_path))
    assert seen["open_missing"] == ["FileNotFoundError", "ENOENT", "/srv/app/missing.yaml"]
    assert seen["open_dir"] == ["IsADirectoryError", "EISDIR", "/srv/app/config"]
    assert seen["open_under_file"][:2] == ["NotADirectoryError", "ENOTDIR"]
    assert seen["stat_missing"][:2] == ["FileNotFoundError", "ENOENT"]
    assert seen["listdir_file"] == ["NotADirectoryError", "ENOTDIR", "/srv/app/config/app.ini"]
    assert seen["listdir_missing"][:2] == ["FileNotFoundError", "ENOENT"]
    assert seen["readlink_file"][:2] == ["OSError", "EINVAL"]
    assert seen["scandir_missing"][:2] == ["FileNotFoundError", "ENOENT"]
    assert seen["dangling"] == [False, True]


def test_big_file_streams_and_hashes(lab: Lab, tmp_path: Path) -> None:
    code = """
        import hashlib, json, mmap, os, time
        big = "/srv/app/data/big.bin"
        out = {}
        start = time.perf_counter()
        h = hashlib.sha256()
        with open(big, "rb") as f:
            first = f.read(10)
            h.update(first)
            while chunk := f.read(1 << 16):
                h.update(chunk)
            out["type"] = type(f.raw).__name__
        out["chunked"] = h.hexdigest()
        out["seconds"] = time.perf_counter() - start
        with open(big, "rb") as f:
            out["whole"] = hashlib.sha256(f.read()).hexdigest()
        with open(big, "rb") as f:
            f.seek(-5, os.SEEK_END)
            tail = f.read()
            f.seek(1_000_000)
            mid = f.read(8)
            out["tell"] = f.tell()
            # C code wants the descriptor: the file becomes a memfd, at the same position
            fd = f.fileno()
            out["fstat"] = os.fstat(fd).st_size
            out["after_fileno"] = f.read(8) == os.pread(fd, 8, 1_000_008)
            with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as m:
                out["mmap"] = hashlib.sha256(m).hexdigest()
                out["mmap_mid"] = m[1_000_000:1_000_008] == mid
                out["mmap_tail"] = m[-5:] == tail
        fd = os.open(big, os.O_RDONLY)
        h = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
        os.close(fd)
        out["os_open"] = h.hexdigest()
        print(json.dumps(out))
    """
    seen = last_json(run_app(target(lab), code, tmp_path=tmp_path))
    expected = rf.big_file_sha256()
    assert seen["type"] == "RemoteReader"  # streamed, not loaded before the first read
    assert seen["chunked"] == seen["whole"] == seen["mmap"] == seen["os_open"] == expected
    assert seen["tell"] == 1_000_008 and seen["fstat"] == rf.BIG_SIZE
    assert seen["after_fileno"] and seen["mmap_mid"] and seen["mmap_tail"]


def test_sqlite_reads_a_remote_database(lab: Lab, tmp_path: Path) -> None:
    code = """
        import json, sqlite3
        out = {}
        db = sqlite3.connect("/srv/app/data/app.sqlite3")
        out["rows"] = db.execute("SELECT id, name FROM users ORDER BY id").fetchall()
        try:
            db.execute("INSERT INTO users VALUES (9, 'x')")
            out["write"] = "allowed"
        except sqlite3.OperationalError as exc:
            out["write"] = str(exc)
        try:
            sqlite3.connect("/srv/app/data/missing.sqlite3")
            out["missing"] = "opened"
        except sqlite3.OperationalError as exc:
            out["missing"] = str(exc)
        local = sqlite3.connect(":memory:")
        out["memory"] = local.execute("SELECT 42").fetchone()[0]
        print(json.dumps(out))
    """
    seen = last_json(run_app(target(lab), code, tmp_path=tmp_path))
    assert seen["rows"] == [list(row) for row in rf.SQLITE_ROWS]
    assert "readonly" in seen["write"]
    assert seen["missing"] == "unable to open database file"
    assert seen["memory"] == 42
    # the connection's private copy is gone, and nothing was created on this host
    assert not Path("/srv/app").exists()


# ------------------------------------------------------------------ policy


@pytest.fixture
def app_dir() -> Iterator[Path]:
    """A folder for the app that is in no default-local list (and absent in the target)."""
    path = Path("/srv") / f"mirrord-test-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_local_and_not_found_patterns(lab: Lab, tmp_path: Path, app_dir: Path) -> None:
    (app_dir / "data.txt").write_text("next to the script")
    code = """
        import json, os, importlib.metadata, pathlib
        out = {}
        def result(fn, *args):
            try:
                return fn(*args)
            except OSError as exc:
                return type(exc).__name__
        out["remote"] = result(lambda p: open(p).read()[:9], "/srv/app/config/settings.yaml")
        # local pattern: read on this host (where /srv/app does not exist)
        out["local"] = result(lambda p: open(p).read(), "/srv/app/config/app.ini")
        # not_found pattern: hidden although it exists in the target
        out["not_found"] = result(lambda p: open(p).read(), "/srv/app/secrets/token")
        out["not_found_exists"] = os.path.exists("/srv/app/secrets/token")
        out["not_found_listdir"] = result(os.listdir, "/srv/app/secrets")
        # the app's own folder and the interpreter's packages stay local
        here = os.path.dirname(os.path.abspath(__file__))
        out["own_dir"] = open(os.path.join(here, "data.txt")).read()
        out["own_listing"] = sorted(os.listdir(here))
        out["metadata"] = bool(importlib.metadata.version("requests"))
        import certifi
        out["site_packages"] = len(pathlib.Path(certifi.where()).read_text()) > 1000
        print(json.dumps(out))
    """
    script = app_dir / "app.py"
    script.write_text(textwrap.dedent(code))
    flags = fs_config(tmp_path, {"local": [r"\.ini$"], "not_found": ["^/srv/app/secrets"]})
    seen = last_json(mirrord("-t", target(lab), *flags, str(script)))
    assert seen["remote"] == "database:"
    assert seen["local"] == "FileNotFoundError"
    assert seen["not_found"] == "FileNotFoundError"
    assert seen["not_found_exists"] is False
    assert seen["not_found_listdir"] == "FileNotFoundError"
    assert seen["own_dir"] == "next to the script"
    assert seen["own_listing"] == ["app.py", "data.txt"]
    assert seen["metadata"] and seen["site_packages"]


def test_modes_local_and_localwithoverrides(lab: Lab, tmp_path: Path) -> None:
    code = """
        import json
        out = {}
        for path in ("/srv/app/config/settings.yaml", "/srv/app/config/app.ini", "/etc/hosts"):
            try:
                out[path] = "staging" in open(path).read()
            except OSError as exc:
                out[path] = type(exc).__name__
        print(json.dumps(out))
    """
    yaml, ini, hosts = "/srv/app/config/settings.yaml", "/srv/app/config/app.ini", "/etc/hosts"
    seen = last_json(run_app(target(lab), code, "--fs-mode", "local", tmp_path=tmp_path))
    assert seen == {yaml: "FileNotFoundError", ini: "FileNotFoundError", hosts: False}
    flags = fs_config(tmp_path, {"mode": "localwithoverrides", "read_only": [r"\.ini$"]})
    seen = last_json(run_app(target(lab), code, *flags, tmp_path=tmp_path))
    # local unless a list (read_only here) or mirrord's remote-by-default list says so
    assert seen == {yaml: "FileNotFoundError", ini: True, hosts: True}


def test_mapping_rewrites_paths(lab: Lab, tmp_path: Path) -> None:
    code = """
        import json, os
        print(json.dumps({"yaml": open("/config/settings.yaml").read(),
                          "listing": sorted(os.listdir("/config"))}))
    """
    flags = fs_config(tmp_path, {"mapping": {"^/config(?<rest>/.*)?$": "/srv/app/config${rest}"}})
    seen = last_json(run_app(target(lab), code, *flags, tmp_path=tmp_path))
    assert seen["yaml"] == rf.SETTINGS_YAML.decode()
    assert "settings.json" in seen["listing"]


def test_children_and_forks_read_remote_files(lab: Lab, tmp_path: Path) -> None:
    code = """
        import json, os, subprocess, sys
        with open("/srv/app/data/big.bin", "rb") as f:
            f.read(5)
            pid = os.fork()
            if pid == 0:  # the child goes on reading the parent's streamed file
                data = f.read(5) + open("/srv/app/secrets/token", "rb").read()
                os.write(1, data[5:] + b"\\n")
                os._exit(0)
            os.waitpid(pid, 0)
        child = subprocess.run(
            [sys.executable, "-c", "print(open('/srv/app/config/app.ini').readline().strip())"],
            capture_output=True, text=True)
        print(json.dumps({"subprocess": child.stdout.strip()}))
    """
    proc = run_app(target(lab), code, tmp_path=tmp_path)
    assert "staging-token" in proc.stdout
    assert last_json(proc) == {"subprocess": "[server]"}


# ------------------------------------------------------------------------ writing


def test_write_mode_changes_reach_the_target(lab: Lab, tmp_path: Path) -> None:
    code = """
        import json, os, pathlib, shutil
        out = {}
        root = pathlib.Path("/srv/app")
        (root / "out").mkdir()
        (root / "out/new.txt").write_text("created\\n")
        with open(root / "out/new.txt", "a") as f:
            f.write("appended\\n")
        with open(root / "config/settings.json", "r+") as f:
            data = json.load(f)
            data["replicas"] = 5
            f.seek(0)
            f.truncate()
            json.dump(data, f)
        fd = os.open("/srv/app/out/raw.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"raw bytes")
        os.close(fd)
        with os.fdopen(os.open("/srv/app/out/fdopen.txt", os.O_WRONLY | os.O_CREAT), "w") as f:
            f.write("via fdopen")
        os.rename("/srv/app/out/raw.bin", "/srv/app/out/renamed.bin")
        (root / "out/gone.txt").write_text("x")
        os.remove("/srv/app/out/gone.txt")
        (root / "out/empty").mkdir()
        (root / "out/empty").rmdir()
        (root / "config/settings.yaml").unlink()
        (root / "out/touched").touch()
        shutil.copyfile("/srv/app/config/app.ini", "/srv/app/out/copy.ini")
        def err(fn, *args):
            try:
                fn(*args)
            except OSError as exc:
                return type(exc).__name__
        out["exclusive"] = err(open, "/srv/app/out/new.txt", "x")
        out["across"] = err(os.rename, "/srv/app/out/renamed.bin", "/tmp/x.bin")
        out["rmdir_full"] = err(os.rmdir, "/srv/app/out")
        out["new"] = (root / "out/new.txt").read_text()
        out["listing"] = sorted(os.listdir("/srv/app/out"))
        print(json.dumps(out))
    """
    seen = last_json(run_app(target(lab), code, "--fs-mode", "write", tmp_path=tmp_path))
    assert seen["exclusive"] == "FileExistsError"
    assert seen["across"] == "OSError"  # EXDEV: one side here, the other in the target
    assert seen["rmdir_full"] == "OSError"  # ENOTEMPTY
    assert seen["new"] == "created\nappended\n"
    listing = ["copy.ini", "fdopen.txt", "new.txt", "renamed.bin", "touched"]
    assert seen["listing"] == listing
    # the target sees every change
    assert in_target(lab, "ls", "/srv/app/out").split() == listing
    assert in_target(lab, "cat", "/srv/app/out/new.txt") == "created\nappended\n"
    assert in_target(lab, "cat", "/srv/app/out/renamed.bin") == "raw bytes"
    assert in_target(lab, "cat", "/srv/app/out/fdopen.txt") == "via fdopen"
    assert in_target(lab, "cat", "/srv/app/out/copy.ini") == rf.APP_INI.decode()
    assert json.loads(in_target(lab, "cat", "/srv/app/config/settings.json"))["replicas"] == 5
    assert "settings.yaml" not in in_target(lab, "ls", "/srv/app/config").split()
    assert not Path("/srv/app").exists()


def test_read_mode_writes_stay_local_unless_read_write(lab: Lab, tmp_path: Path) -> None:
    code = """
        import json, os
        out = {}
        for path in ("/srv/app/config/new.txt", "/srv/app/data/new.txt"):
            try:
                with open(path, "w") as f:
                    f.write("written")
                out[path] = "written"
            except OSError as exc:
                out[path] = type(exc).__name__
        out["unlink"] = "kept"
        try:
            os.unlink("/srv/app/config/app.ini")
        except OSError as exc:
            out["unlink"] = type(exc).__name__
        print(json.dumps(out))
    """
    flags = fs_config(tmp_path, {"mode": "read", "read_write": ["^/srv/app/data/"]})
    seen = last_json(run_app(target(lab), code, *flags, tmp_path=tmp_path))
    # read mode: writes are local, and this host has no /srv/app
    assert seen["/srv/app/config/new.txt"] == "FileNotFoundError"
    assert seen["unlink"] == "FileNotFoundError"
    # ... except where read_write says otherwise
    assert seen["/srv/app/data/new.txt"] == "written"
    assert in_target(lab, "cat", "/srv/app/data/new.txt") == "written"
    assert "new.txt" not in in_target(lab, "ls", "/srv/app/config").split()
    assert "app.ini" in in_target(lab, "ls", "/srv/app/config").split()


# ------------------------------------------------------------------ the agent side


@pytest.fixture
def agent_client(tmp_path: Path) -> Iterator[tuple[ProxyClient, int]]:
    """A targetless agent on a unix socket, and a client speaking to it directly."""
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirrord.agent", "--listen", f"unix:{sock}", "--idle-timeout", "30"],
        env={**os.environ, "MIRRORD_AGENT_TOKEN": "t0ken"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["ready"]
    try:
        yield ProxyClient(str(sock), "t0ken"), proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def test_agent_refuses_bad_paths_and_bounds_reads(
    agent_client: tuple[ProxyClient, int], tmp_path: Path
) -> None:
    client, _ = agent_client
    data = os.urandom(3 * MAX_FILE_CHUNK)
    (tmp_path / "f.bin").write_bytes(data)
    for bad in ("relative/path", "/tmp/with\0nul", ""):
        reply = client.request(FileOpen(req=0, path=bad, flags=0, mode=0, read_ahead=0))
        assert isinstance(reply, RequestFailed) and reply.errno == 22  # EINVAL
    # ".." is resolved inside the target's root
    dotted = f"/../../{tmp_path}/../{tmp_path.name}/f.bin"
    opened = client.request(FileOpen(req=0, path=dotted, flags=0, mode=0, read_ahead=10))
    assert isinstance(opened, FileOpened) and opened.data == data[:10] and opened.handle
    # a read never returns more than one chunk, whatever was asked
    reply = client.request(FileRead(req=0, handle=opened.handle, offset=5, size=1 << 30))
    assert isinstance(reply, FileData) and reply.data == data[5 : 5 + MAX_FILE_CHUNK]
    assert isinstance(client.request(FileClose(req=0, handle=opened.handle)), FileDone)
    reply = client.request(FileRead(req=0, handle=opened.handle, offset=0, size=1))
    assert isinstance(reply, RequestFailed) and reply.errno == 9  # EBADF after close
    # a small read-only file comes whole with the open, and nothing stays open
    (tmp_path / "small").write_bytes(b"tiny")
    small = client.request(
        FileOpen(req=0, path=str(tmp_path / "small"), flags=0, mode=0, read_ahead=MAX_FILE_CHUNK)
    )
    assert isinstance(small, FileOpened) and (small.handle, small.data, small.eof) == (
        0,
        b"tiny",
        True,
    )
    # a FIFO is refused instead of blocking a worker thread forever
    os.mkfifo(tmp_path / "fifo")
    reply = client.request(
        FileOpen(req=0, path=str(tmp_path / "fifo"), flags=0, mode=0, read_ahead=0)
    )
    assert isinstance(reply, RequestFailed) and reply.errno == 95  # EOPNOTSUPP


def test_agent_pages_large_listings(agent_client: tuple[ProxyClient, int], tmp_path: Path) -> None:
    client, _ = agent_client
    folder = tmp_path / "many"
    folder.mkdir()
    names = {f"{i:04d}-" + "n" * 200 for i in range(3000)}
    for name in names:
        (folder / name).touch()
    seen: list[str] = []
    pages = 0
    while True:
        reply = client.request(FileListDir(req=0, path=str(folder), start=len(seen)))
        assert isinstance(reply, FileEntries)
        seen += [entry[0].decode() for entry in reply.entries]
        pages += 1
        if not reply.more:
            break
    assert pages > 1 and sorted(seen) == sorted(names)


def test_agent_closes_a_clients_files_when_it_goes(
    agent_client: tuple[ProxyClient, int], tmp_path: Path
) -> None:
    client, pid = agent_client
    (tmp_path / "f").write_bytes(b"x" * 100)

    def open_fds() -> int:
        return len(os.listdir(f"/proc/{pid}/fd"))

    client.connect()
    # a first answer: the agent has set up this client's link (its pump's descriptors too)
    assert isinstance(client.request(FileListDir(req=0, path=str(tmp_path), start=0)), FileEntries)
    before = open_fds()
    for _ in range(5):
        reply = client.request(
            FileOpen(req=0, path=str(tmp_path / "f"), flags=0, mode=0, read_ahead=0)
        )
        assert isinstance(reply, FileOpened) and reply.handle
    assert open_fds() == before + 5
    client.after_fork()  # drops this thread's link: the agent sees the client go
    deadline = time.monotonic() + 5
    while open_fds() > before - 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds() <= before - 1  # its files and its connection are gone


def test_check_path() -> None:
    assert check_path("/a/../../b/./c//d") == "/b/c/d"
    assert check_path("//x") == "/x"
    for bad in ("a", "", "/a\0b", None, b"/a"):
        with pytest.raises(OSError):
            check_path(bad)


# ------------------------------------------------------------------ config -> layer


def test_fs_settings_reach_the_layer() -> None:
    cfg = load_config(
        None,
        env={"MIRRORD_FILE_MODE": "write"},
        overrides={"feature.fs.local": [r"\.ini$"], "feature.fs.readonly_file_buffer": 4096},
    )
    fs = cfg.layer_settings()["fs"]
    assert fs["mode"] == "write" and fs["local"] == [r"\.ini$"]
    assert fs["readonly_file_buffer"] == 4096
    assert cfg.unimplemented_keys == []
    settings = LayerSettings.from_json(json.dumps(cfg.layer_settings()))
    assert settings.fs == cfg.fs and settings.fs.to_dict() == fs
    assert load_config(None, env={}, overrides={"feature.fs": False}).fs.mode == "local"
    assert load_config(None, env={}).fs.mode == "read"
