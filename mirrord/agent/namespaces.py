"""Entering a target's namespaces (Python 3.11 has no os.setns: libc through ctypes)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SLAVE = 1 << 19

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class NamespaceError(OSError):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise NamespaceError(err, f"{what}: {os.strerror(err)}")


def setns(path: str | Path, nstype: int) -> None:
    """Move this thread (and threads it starts later) into the namespace at `path`."""
    if nstype == CLONE_NEWNS and threading.active_count() > 1:
        # the kernel refuses a mount-namespace switch of a multi-threaded process
        raise NamespaceError(0, "setns(mount) must happen before any thread starts")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, nstype), f"setns {path}")
    finally:
        os.close(fd)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def bind_mount(source: str, target: str) -> None:
    _check(_libc.mount(source.encode(), target.encode(), None, MS_BIND, None), f"mount {target}")


def make_rslave(target: str = "/") -> None:
    _check(_libc.mount(b"none", target.encode(), None, MS_REC | MS_SLAVE, None), "mount rslave")


def same_namespace(a: str | Path, b: str | Path) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def enter_named_netns(name: str) -> None:
    """What `ip netns exec NAME` does: its network namespace, and /etc/netns/NAME over /etc."""
    setns(f"/run/netns/{name}", CLONE_NEWNET)
    etc = Path("/etc/netns") / name
    if not etc.is_dir():
        return
    # a private mount namespace, so the bind mounts stay ours
    unshare(CLONE_NEWNS)
    make_rslave("/")
    for entry in sorted(etc.iterdir()):
        target = Path("/etc") / entry.name
        if target.exists():
            bind_mount(str(entry), str(target))


def enter_pid(pid: int) -> None:
    """The network and mount namespaces of process `pid`."""
    setns(f"/proc/{pid}/ns/net", CLONE_NEWNET)
    if not same_namespace(f"/proc/{pid}/ns/mnt", "/proc/self/ns/mnt"):
        setns(f"/proc/{pid}/ns/mnt", CLONE_NEWNS)
