"""Entering a target's namespaces (Python 3.11 has no os.setns: libc through ctypes)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from mirrord.system.libc import check, libc

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SLAVE = 1 << 19


class NamespaceError(OSError):
    pass


def _check(result: int, what: str) -> None:
    check(result, what, NamespaceError)


def setns(path: str | Path, nstype: int) -> None:
    """Move this thread (and threads it starts later) into the namespace at `path`."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns_fd(fd, nstype, str(path))
    finally:
        os.close(fd)


def setns_fd(fd: int, nstype: int, what: str = "namespace") -> None:
    if nstype == CLONE_NEWNS and threading.active_count() > 1:
        # the kernel refuses a mount-namespace switch of a multi-threaded process
        raise NamespaceError(0, "setns(mount) must happen before any thread starts")
    _check(libc.setns(fd, nstype), f"setns {what}")


def unshare(flags: int) -> None:
    _check(libc.unshare(flags), "unshare")


def bind_mount(source: str, target: str) -> None:
    _check(libc.mount(source.encode(), target.encode(), None, MS_BIND, None), f"mount {target}")


def make_rslave(target: str = "/") -> None:
    _check(libc.mount(b"none", target.encode(), None, MS_REC | MS_SLAVE, None), "mount rslave")


def same_namespace(a: str | Path, b: str | Path) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def pids_in_netns(path: str | Path) -> list[int]:
    """Pids of the processes in the network namespace at `path` (like `ip netns pids`)."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    key = (st.st_dev, st.st_ino)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            pst = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (pst.st_dev, pst.st_ino) == key:
            pids.append(int(entry))
    return pids


def enter_named_netns(name: str, pid: int | None = None) -> None:
    """The network namespace NAME, and the mount namespace of its process `pid`.

    A service started with `ip netns exec` has its own mount namespace: it already has
    /etc/netns/NAME bound over /etc (DNS as the target resolves) and it holds the target's
    files. Without such a process, do what `ip netns exec NAME` does.
    """
    netns = f"/run/netns/{name}"
    mnt_fd = _mount_ns_of(pid, netns) if pid is not None else None
    setns(netns, CLONE_NEWNET)
    if mnt_fd is not None:
        try:
            setns_fd(mnt_fd, CLONE_NEWNS, f"/proc/{pid}/ns/mnt")
        finally:
            os.close(mnt_fd)
        return
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


def _mount_ns_of(pid: int, netns: str) -> int | None:
    """An open handle on `pid`'s mount namespace if it differs from ours, else None.

    Opened before checking that `pid` is still in `netns`, so a pid reused in between
    cannot hand us a stranger's namespace.
    """
    try:
        fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    if same_namespace(f"/proc/{pid}/ns/net", netns) and not same_namespace(
        f"/proc/self/fd/{fd}", "/proc/self/ns/mnt"
    ):
        return fd
    os.close(fd)
    return None


def enter_pid(pid: int) -> None:
    """The network and mount namespaces of process `pid`."""
    setns(f"/proc/{pid}/ns/net", CLONE_NEWNET)
    if not same_namespace(f"/proc/{pid}/ns/mnt", "/proc/self/ns/mnt"):
        setns(f"/proc/{pid}/ns/mnt", CLONE_NEWNS)


@contextlib.contextmanager
def thread_in_netns(path: str | Path) -> Iterator[None]:
    """Move the *calling thread* into the network namespace at `path` for the block.

    Sockets created inside the block stay in that namespace and may be used from any
    thread afterwards. Only the network namespace changes (files, /etc stay ours).
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(path, CLONE_NEWNET)
        try:
            yield
        finally:
            setns_fd(home, CLONE_NEWNET, "our own network namespace")
    finally:
        os.close(home)
