"""One agent per local target, shared by every session on it.

Sessions that steal or mirror the same target must meet in one agent: it alone can
share a port between HTTP filters and refuse a second whole-port steal. The agent
listens on a unix socket named after the target in a root-only (or user-only)
directory, next to its token (mode 0600); a session finds it there or starts it.
The agent leaves when its last client has been gone for its idle timeout, and takes
its socket and token file with it.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mirrord.launch.processes import spawn_ready
from mirrord.system.procfs import process_start

#: How long a local agent outlives its last client.
IDLE_TIMEOUT = 3.0
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class AgentHandle:
    address: str  # unix:PATH
    token: str
    log: Path
    started: bool  # by this session (False: found running)
    proxy_args: tuple[str, ...] = ()  # what else the intproxy needs to reach it

    def failure_hint(self) -> str:
        return f"agent log: {self.log}"


def agents_dir() -> Path:
    base = (
        Path("/run/mirrord")
        if os.geteuid() == 0
        else Path(tempfile.gettempdir()) / f"mirrord-{os.geteuid()}"
    )
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    if base.stat().st_uid != os.geteuid() or base.stat().st_mode & 0o077:
        os.chmod(base, 0o700)  # ours alone: the tokens live here
    return base


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


#: Agent logs older than this are removed when an agent starts (they live in /run).
LOG_KEEP_SECONDS = 24 * 3600


def _prune_old_logs(directory: Path) -> None:
    cutoff = time.time() - LOG_KEEP_SECONDS
    for log in directory.glob("*.log"):
        try:
            if log.stat().st_mtime < cutoff:
                log.unlink()
        except OSError:
            pass


def _identity(target: str) -> str:
    """What tells this target from an earlier one of the same name (a namespace deleted
    and made again, a reused pid): an agent of the old one must not be joined."""
    try:
        if target.startswith("netns/"):
            return f"_{os.stat(f'/run/netns/{target[6:]}').st_ino}"
        if target.startswith("pid/"):
            return f"_{process_start(int(target[4:])) or 0}"
    except (OSError, ValueError):
        pass
    return ""


def agent_for(target: str, *, log_level: str, env: dict[str, str]) -> AgentHandle:
    """The running agent of `target`, or a new one."""
    directory = agents_dir()
    key = re.sub(r"[^A-Za-z0-9_.-]", "_", target) + _identity(target)
    sock, token_file, log = (directory / f"{key}{ext}" for ext in (".sock", ".sock.token", ".log"))
    with _locked(directory):
        _prune_old_logs(directory)
        if sock.exists() and token_file.exists() and _answers(sock):
            return AgentHandle(f"unix:{sock}", token_file.read_text().strip(), log, started=False)
        sock.unlink(missing_ok=True)
        token = secrets.token_hex(16)
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        try:
            spawn_ready(
                "agent",
                [
                    sys.executable,
                    "-m",
                    "mirrord.agent",
                    "--target",
                    target,
                    "--listen",
                    f"unix:{sock}",
                    "--idle-timeout",
                    str(IDLE_TIMEOUT),
                    "--log-level",
                    log_level,
                ],
                {**env, "MIRRORD_AGENT_TOKEN": token},
                log,
                START_TIMEOUT,
            )
        except BaseException:
            token_file.unlink(missing_ok=True)
            raise
        return AgentHandle(f"unix:{sock}", token, log, started=True)
