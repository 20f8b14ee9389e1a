"""Child processes of the control plane: free ports, start with a log file, wait for a
health URL, stop (TERM, then KILL)."""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


class StartError(RuntimeError):
    """A component did not come up (the message ends with the last lines of its log)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the kernel's pick, so parallel labs differ)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment minus what would configure a component behind its flags' back:
    etcd reads every ``ETCD_*`` variable as a flag, clients read ``KUBECONFIG``, and a proxy
    would sit between the apiserver and kwok."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ETCD_") and k != "KUBECONFIG" and not k.lower().endswith("_proxy")
    }
    env["NO_PROXY"] = env["no_proxy"] = LOOPBACK  # everything here is on loopback
    env.update(extra or {})
    return env


def _die_with_parent() -> None:
    # If the test process is killed -9, the kernel kills its children too (no stray
    # apiservers holding ports). The signal fires when the *thread* that forked exits,
    # which is why Component.start only arms it from the main thread.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Component:
    """One process of the control plane, logging to ``log``."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=clean_env)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_at: float = 0.0
    ready_after: float | None = None  # seconds from start to ready

    def start(self) -> None:
        armed = threading.current_thread() is threading.main_thread()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # a terminal's ^C goes to the tests, not to etcd
                preexec_fn=_die_with_parent if armed else None,
            )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty log)"

    def failure(self, what: str) -> StartError:
        code = self.proc.poll() if self.proc else None
        status = f"exited with {code}" if code is not None else "still running"
        return StartError(
            f"{self.name} {what} ({status}); last lines of {self.log}:\n{self.log_tail()}"
        )

    def wait_until(self, probe: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``probe`` until it is true; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if not self.alive():
                raise self.failure(f"died before it was {what}")
            if probe():
                self.ready_after = time.monotonic() - self.started_at
                return
            if time.monotonic() > deadline:
                raise self.failure(f"was not {what} after {timeout:.0f} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def terminate(self) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def wait_or_kill(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()


def stop_all(components: Sequence[Component], grace: float = STOP_GRACE) -> None:
    """SIGTERM all at once, then SIGKILL whatever is left after ``grace`` seconds."""
    for c in components:
        c.terminate()
    deadline = time.monotonic() + grace
    for c in components:
        c.wait_or_kill(deadline)


def https_get(
    host: str,
    port: int,
    path: str,
    *,
    ca: Path | None = None,
    cert: tuple[Path, Path] | None = None,
    timeout: float = 2.0,
) -> tuple[int, bytes]:
    """One HTTPS GET; ``ca=None`` skips verification (components' self-signed serving certs)."""
    if ca is None:
        ctx = ssl._create_unverified_context()
    else:
        ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def http_get(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def probe_ok(get: Callable[[], tuple[int, bytes]]) -> Callable[[], bool]:
    """A probe that is true when ``get()`` answers 200 (connection errors count as not yet)."""

    def probe() -> bool:
        try:
            return get()[0] == 200
        except (OSError, http.client.HTTPException):
            return False

    return probe
