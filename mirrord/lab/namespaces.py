"""The lab's network namespaces: `ip` in batches, processes in a namespace, calls inside one."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mirrord.system.namespaces import pids_in_netns, thread_in_netns

T = TypeVar("T")

NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")


class LabError(RuntimeError):
    """The lab could not be built (the message is one readable line)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def run(argv: Sequence[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), input=input, capture_output=True, text=True, check=False)


def ip_batch(commands: Sequence[str], ns: str | None = None, force: bool = False) -> None:
    """Run several `ip` commands in one `ip -batch -` process (one fork instead of many)."""
    argv = ["ip"]
    if ns:
        argv += ["-n", ns]
    if force:
        argv.append("-force")  # keep going after errors (teardown of half-built labs)
    r = run([*argv, "-batch", "-"], input="\n".join(commands) + "\n")
    if r.returncode and not force:
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise LabError(f"ip{' -n ' + ns if ns else ''} -batch failed: {last}")


def netns_names() -> set[str]:
    # Same source as `ip netns list`, without a subprocess.
    try:
        return set(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return set()


def link_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)  # in the calling thread's namespace (the host)
        return True
    except OSError:
        return False


def netns_pids(ns: str) -> list[int]:
    """Pids of all processes in network namespace ``ns`` (like `ip netns pids`)."""
    return pids_in_netns(NETNS_DIR / ns)


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Move the *calling thread* into network namespace ``ns`` for the block.

    Only the network namespace changes: files and /etc/resolv.conf are the host's, so
    resolve names with ``Lab.run_in`` (a real `ip netns exec`), not here.
    """
    with thread_in_netns(NETNS_DIR / ns):
        yield


def call_in_netns(ns: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)`` in a fresh thread inside ``ns`` and return its result.

    A throwaway thread means the caller's thread can never be left in the wrong namespace.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            with in_netns(ns):
                box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns:{ns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
