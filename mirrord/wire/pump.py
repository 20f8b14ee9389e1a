"""The native data plane of a link: a C thread (mirrord/native/src/pump.c) that takes the
link's socket and the local sockets of relayed TCP connections and moves their bytes
without Python. The Link's Python side then talks to the pump over a socket pair: every
frame that is not a native connection's passes through, in order.

Used where the link is a plain socket and carries no descriptors to this side (a cluster
agent's TCP link, a local agent's link in relay mode); a carrier (the Kubernetes
port-forward's websocket) stays in Python. Without the library (no C compiler at build
time) or with MIRRORD_NATIVE_PUMP=0, links stay in Python, as they were before.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
from pathlib import Path

from mirrord.protocol.flow import GROWTH_BUDGET, INITIAL_WINDOW, MAX_WINDOW
from mirrord.protocol.messages import MAX_CHUNK

log = logging.getLogger("mirrord")

LIBRARY = Path(__file__).resolve().parent.parent / "native" / "libmirrord_pump.so"
#: "0" keeps every link in Python; a path loads that library instead (sanitized builds)
ENV = "MIRRORD_NATIVE_PUMP"

_lib: ctypes.CDLL | None = None
_tried = False


def _library() -> ctypes.CDLL | None:
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    choice = os.environ.get(ENV, "")
    if choice == "0":
        return None
    path = Path(choice) if choice and choice != "1" else LIBRARY
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        log.info("links stay in Python: the native data plane is not loadable (%s)", exc)
        return None
    lib.mirrord_pump_start.restype = ctypes.c_int
    lib.mirrord_pump_start.argtypes = [ctypes.c_int, ctypes.c_int] + [ctypes.c_int64] * 4
    _lib = lib
    return lib


def available() -> bool:
    return _library() is not None


def start(sock: socket.socket) -> socket.socket:
    """Give `sock` (a connected link socket) to a new pump (see `available()`); the socket
    Python's Link now reads and writes instead."""
    lib = _library()
    assert lib is not None, "start() without the library"
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    rc = lib.mirrord_pump_start(
        sock.fileno(), theirs.fileno(), INITIAL_WINDOW, MAX_WINDOW, GROWTH_BUDGET, MAX_CHUNK
    )
    # the pump owns both descriptors now, also when it failed (it closed them)
    sock.detach()
    theirs.detach()
    if rc != 0:
        ours.close()
        raise OSError(-rc, f"the native data plane did not start: {os.strerror(-rc)}")
    return ours
