"""Real servers inside the lab's staging namespace, for the native programs to reach
(fixtures; import them into a test module). They listen on staging's side of its link
to the backend, which this host cannot route to: only a connection from staging arrives.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrord.lab import Lab, create_lab

REDIS_NAME = "redis.staging.svc"
POSTGRES_NAME = "postgres.staging.svc"


def wait_until(probe, what: str, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not start")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def module_lab() -> Iterator[Lab]:
    """One lab for a module whose tests only read from it (outgoing traffic): each test
    then pays for its session, not for a lab. Same lock as the `lab` fixture."""
    if os.geteuid() != 0:
        pytest.skip("needs root (not root)")
    with open("/run/mirrord-lab-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lab = create_lab()
        try:
            yield lab
        finally:
            lab.close()


@pytest.fixture
def staging_names(lab: Lab) -> dict[str, str]:
    """Names only staging resolves (its hosts file) for the servers below."""
    hosts = lab.etc_dirs[0] / "hosts"
    names = {REDIS_NAME: lab.staging_backend_addr, POSTGRES_NAME: lab.staging_backend_addr}
    known = hosts.read_text()
    # appended in place: the staging service sees the file through a bind mount
    with hosts.open("a") as f:
        f.writelines(
            f"{addr} {name}\n" for name, addr in names.items() if f" {name}\n" not in known
        )
    return names


@pytest.fixture
def redis_in_staging(lab: Lab, staging_names: dict[str, str]) -> Iterator[str]:
    """redis-server in staging, holding key `greeting`; yields its name."""
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed (scripts/setup installs it)")
    addr = staging_names[REDIS_NAME]
    proc = lab.popen_in(
        lab.staging_ns,
        # (protected mode refuses clients off loopback: ours come from staging's address)
        [
            "redis-server",
            "--bind",
            addr,
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def ping() -> bool:
        out = lab.run_in(lab.staging_ns, ["redis-cli", "-h", addr, "ping"]).stdout
        return out.strip() == "PONG"

    wait_until(ping, "redis-server")
    lab.run_in(lab.staging_ns, ["redis-cli", "-h", addr, "set", "greeting", "hello-from-redis"])
    yield REDIS_NAME
    proc.terminate()
    proc.wait(10)


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        pytest.fail("PostgreSQL is not installed (scripts/setup installs it)")
    return Path(found[-1]).parent


@pytest.fixture(scope="session")
def postgres_data() -> Iterator[Path]:
    """One initdb for the run (the slow part), owned by the postgres user (outside
    pytest's folders, which only root may enter)."""
    bindir = _postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="mirrord-pg-"))
    folder.chmod(0o755)
    shutil.chown(folder, "postgres")
    data = folder / "data"
    subprocess.run(
        ["runuser", "-u", "postgres", "--", str(bindir / "initdb"), "-D", str(data), "-A",
         "trust", "-U", "app", "--no-sync"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    # clients come from the lab's addresses (initdb trusts loopback only)
    with (data / "pg_hba.conf").open("a") as hba:
        hba.write("host all all 198.18.0.0/15 trust\n")
    yield data
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_in_staging(
    lab: Lab, staging_names: dict[str, str], postgres_data: Path
) -> Iterator[str]:
    """PostgreSQL in staging with a table `pets`; yields its name (user app, no password)."""
    addr = staging_names[POSTGRES_NAME]
    sockets = postgres_data.parent / "sock"
    sockets.mkdir(exist_ok=True)
    shutil.chown(sockets, "postgres")
    proc = lab.popen_in(
        lab.staging_ns,
        ["runuser", "-u", "postgres", "--", str(_postgres_bin() / "postgres"), "-D",
         str(postgres_data), "-c", f"listen_addresses={addr}", "-c",
         f"unix_socket_directories={sockets}", "-c", "fsync=off", "-p", "5432"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def psql(sql: str) -> subprocess.CompletedProcess[str]:
        return lab.run_in(
            lab.staging_ns, ["psql", "-h", addr, "-U", "app", "-d", "postgres", "-tAc", sql]
        )

    wait_until(lambda: psql("select 1").stdout.strip() == "1", "postgres")
    psql(
        "drop table if exists pets; create table pets (name text); insert into pets values ('rex')"
    )
    yield POSTGRES_NAME
    proc.terminate()
    proc.wait(15)


def env_without_mirrord() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MIRRORD_")}


# ----------------------------------------------------------------- the relay's builds

REPO = Path(__file__).resolve().parents[1]
ASAN_OPTIONS = "detect_leaks=0:abort_on_error=0:exitcode=99:halt_on_error=1"


def asan_runtime() -> str:
    return subprocess.run(
        ["cc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="session")
def relay_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The relay as installed (built by scripts/setup) and an AddressSanitizer build."""
    from mirrord.native import LIBRARY
    from mirrord.native.build import build_library

    out = tmp_path_factory.mktemp("relay")
    return {"plain": build_library(LIBRARY.parent), "asan": build_library(out, sanitize=True)}


@pytest.fixture
def asan_relay(monkeypatch: pytest.MonkeyPatch, relay_builds: dict[str, Path]) -> Path:
    """Programs of this test get the relay built with AddressSanitizer (a memory error
    fails them). Python programs only: preloaded into programs that call setlocale()
    at start (curl, wget, psql) the ASan runtime of this gcc deadlocks by itself."""
    monkeypatch.setenv("MIRRORD_RELAY_LIBRARY", f"{asan_runtime()}:{relay_builds['asan']}")
    monkeypatch.setenv("ASAN_OPTIONS", ASAN_OPTIONS)
    return relay_builds["asan"]


@pytest.fixture(scope="session")
def native_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/native_client.c built with AddressSanitizer and UBSan: the runtime is linked
    in, so the ASan build of the relay can be preloaded into it."""
    out = tmp_path_factory.mktemp("client") / "native_client"
    subprocess.run(
        ["cc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
         "-fno-omit-frame-pointer", "-g", "-o", str(out), str(REPO / "tests/native_client.c"),
         "-lpthread"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return out
