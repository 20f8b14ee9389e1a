"""The one handle on the C library, for the calls Python 3.11 lacks (setns, mount)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def check(result: int, what: str, error: type[OSError] = OSError) -> None:
    """Raise `error` with errno's message when a libc call returned non-zero."""
    if result != 0:
        err = ctypes.get_errno()
        raise error(err, f"{what}: {os.strerror(err)}")
