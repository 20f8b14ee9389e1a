"""One fake staging cluster: build it (`create_lab`), run things in it, tear it down.

Its shape is in `topology`, its processes in `services`, slot bookkeeping in `slots`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mirrord.lab import remote_files
from mirrord.lab.namespaces import (
    LabError,
    call_in_netns,
    ip_batch,
    link_exists,
    netns_names,
    netns_pids,
)
from mirrord.lab.services import STAGING_ENV_TEMPLATE, start_services
from mirrord.lab.slots import (
    MAX_SLOT,
    free_slot,
    global_lock,
    known_slots,
    owner_alive,
    read_state,
    state_path,
    write_owner,
)
from mirrord.lab.topology import Topology
from mirrord.system.procfs import process_start

T = TypeVar("T")

TMP_PREFIX = "mirrord-lab-"
KILL_GRACE = 2.0


def _run_defaults(popen_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Output captured as text, no check, a 60 s timeout, unless the caller says otherwise."""
    if "stdout" not in popen_kwargs and "stderr" not in popen_kwargs:
        popen_kwargs.setdefault("capture_output", True)
    popen_kwargs.setdefault("text", True)
    popen_kwargs.setdefault("timeout", 60)
    popen_kwargs.setdefault("check", False)
    return popen_kwargs


@dataclass(eq=False, kw_only=True)  # a live resource: identity semantics, hashable
class Lab(Topology):
    """One fake staging cluster. Build with ``create_lab()``; tear down with ``close()``."""

    tmpdir: Path
    ca_pem: Path
    staging_env: dict[str, str] = field(default_factory=dict)
    service_pid: int = 0
    # service name -> pid, for every process the lab started
    pids: dict[str, int] = field(default_factory=dict)
    # files only the staging service sees (its own mount namespace): see remote_files.py
    remote_root: str = remote_files.ROOT
    _procs: list[subprocess.Popen[Any]] = field(default_factory=list, init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)
    _close_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _owns_state: bool = field(default=False, init=False, repr=False)
    _tmpdir_owned: bool = field(default=True, init=False, repr=False)
    _creator_pid: int = field(default_factory=os.getpid, init=False, repr=False)

    @classmethod
    def _for_slot(cls, slot: int, tmpdir: Path | None) -> Lab:
        lab = cls(
            slot=slot,
            tmpdir=tmpdir or Path("/nonexistent"),
            ca_pem=(tmpdir or Path("/nonexistent")) / "ca.pem",
            staging_env=dict(STAGING_ENV_TEMPLATE),
        )
        # Only ever rm -rf a directory that is recognisably ours.
        lab._tmpdir_owned = tmpdir is not None and tmpdir.name.startswith(TMP_PREFIX)
        return lab

    def log_path(self, service: str) -> Path:
        return self.tmpdir / f"{service}.log"

    # ---- running things inside the namespaces

    def run_in(
        self, ns: str, argv: Sequence[str], **popen_kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``ns`` (`ip netns exec`, so /etc/netns files apply).

        Output is captured as text and the call times out after 60 s unless overridden.
        """
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(ns), *argv], **_run_defaults(popen_kwargs)
        )

    def run_in_service(
        self, argv: Sequence[str], **popen_kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the staging service's mount and network namespaces (its files).

        Same defaults as ``run_in``.
        """
        nsenter = shutil.which("nsenter") or "nsenter"
        return subprocess.run(
            [nsenter, "-t", str(self.service_pid), "-m", "-n", *argv],
            **_run_defaults(popen_kwargs),
        )

    def popen_in(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``ns``; the lab kills it on close() if still running.

        `ip netns exec` execs the command, so the returned pid is the command's own.
        """
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(ns), *argv], **kw
        )
        self.adopt(proc)
        return proc

    def adopt(self, proc: subprocess.Popen[Any]) -> None:
        """The lab kills `proc` on close() if it still runs."""
        self._procs.append(proc)

    def call_in(self, ns: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn`` in this process, in a thread switched into ``ns`` (see ``in_netns``)."""
        return call_in_netns(self.ns(ns), fn, *args, **kwargs)

    # ---- building

    # ---- teardown

    def close(self) -> None:
        """Tear everything down. Idempotent; copes with a half-built lab."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self._close_at_exit)
        self._kill_everything()
        commands = []
        if link_exists(self.host_veth):
            # Deleting one end removes the pair now; namespace deletion would do it
            # asynchronously, and a new lab could then trip over the old name.
            commands.append(f"link del dev {self.host_veth}")
        existing = netns_names()
        commands += [f"netns del {ns}" for ns in self.namespaces if ns in existing]
        if commands:
            ip_batch(commands, force=True)
        for etc in self.etc_dirs:
            shutil.rmtree(etc, ignore_errors=True)
        if self._tmpdir_owned and not os.environ.get("MIRRORD_LAB_KEEP_TMP"):
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        if self._owns_state:
            with contextlib.suppress(OSError):
                state_path(self.slot).unlink()

    def _kill_everything(self) -> None:
        # Our own children first (so they get reaped), then anything else left in the
        # namespaces (e.g. processes a test started with plain subprocess): a
        # namespace is only really gone once no process holds it.
        procs = [p for p in self._procs if p.poll() is None]
        own = {p.pid for p in self._procs}
        strays = {pid for ns in self.namespaces for pid in netns_pids(ns)} - own - {os.getpid()}
        for p in procs:
            with contextlib.suppress(OSError):
                p.send_signal(signal.SIGTERM)
        for pid in strays:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE
        while time.monotonic() < deadline:
            procs = [p for p in procs if p.poll() is None]
            strays = {pid for pid in strays if process_start(pid) is not None}
            if not procs and not strays:
                return
            time.sleep(0.01)
        for p in procs:
            with contextlib.suppress(OSError):
                p.kill()
        for pid in strays:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=KILL_GRACE)

    def _close_at_exit(self) -> None:
        # A forked child exiting must not tear down its parent's lab.
        if os.getpid() == self._creator_pid:
            self.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cleanup_stale_locked(include_unowned: bool) -> list[int]:
    cleaned = []
    for slot in sorted(known_slots()):
        state = read_state(slot)
        if state is None and not include_unowned:
            continue  # not made by this module (or a record we cannot read): leave it
        if state is not None and owner_alive(state):
            continue
        tmp = state.get("tmpdir") if state else None
        lab = Lab._for_slot(slot, Path(tmp) if isinstance(tmp, str) else None)
        lab._owns_state = True
        lab.close()
        cleaned.append(slot)
    return cleaned


def cleanup_stale_labs(include_unowned: bool = False) -> list[int]:
    """Tear down labs whose creating process is gone (e.g. after ``kill -9``).

    With ``include_unowned`` also removes ``mrd*-stg``/``mrd*-be`` namespaces (and
    ``mrd*h`` links) that have no owner record at all. Returns the cleaned slots.
    """
    if os.geteuid() != 0:
        raise LabError("the lab needs root (cleaning up network namespaces); not running as root")
    with global_lock():
        return _cleanup_stale_locked(include_unowned)


def create_lab() -> Lab:
    """Build a lab in the first free slot and wait until all its services answer.

    Raises LabError (after cleaning up whatever was built) on failure. The lab is
    closed at interpreter exit if the caller doesn't; on SIGTERM only if the caller
    turns the signal into an exit (e.g. ``signal.signal(SIGTERM, lambda *_: sys.exit(1))``).
    """
    if os.geteuid() != 0:
        raise LabError("the lab needs root (it creates network namespaces); not running as root")
    for tool in ("ip", "dnsmasq"):
        if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()):
            raise LabError(f"the lab needs `{tool}` installed")
    tmpdir = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
    lab: Lab | None = None
    try:
        with global_lock():
            # Free slots held by labs whose creator died without closing them.
            _cleanup_stale_locked(include_unowned=False)
            slot = free_slot()
            if slot is None:
                raise LabError(f"no free lab slot (all {MAX_SLOT + 1} in use)")
            lab = Lab._for_slot(slot, tmpdir)
            # Owner record before anything exists, so a half-built lab is never "unowned".
            write_owner(slot, tmpdir)
            lab._owns_state = True
            atexit.register(lab._close_at_exit)
            lab.build_links()
        lab.write_etc()
        start_services(lab)
        return lab
    except BaseException as exc:
        if lab is not None:
            lab.close()
        else:
            shutil.rmtree(tmpdir, ignore_errors=True)
        if isinstance(exc, LabError):
            raise
        if isinstance(exc, Exception):
            raise LabError(f"could not create the lab: {type(exc).__name__}: {exc}") from exc
        raise
