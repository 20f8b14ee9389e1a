"""The native relay: a small C library preloaded (LD_PRELOAD) into programs that the
Python layer cannot patch, and into Python programs for their C extensions.

The library is compiled from `src/` when the package is built (setup.py), into this
folder. This module only says where it is; it never loads it.
"""

from __future__ import annotations

import os
from pathlib import Path

LIBRARY = Path(__file__).resolve().parent / "libmirrord_relay.so"
#: libraries to preload instead, ":"-separated, the relay last (the tests'
#: AddressSanitizer build comes after its runtime); "none" preloads nothing, leaving
#: Python programs to the Python layer alone
LIBRARY_ENV = "MIRRORD_RELAY_LIBRARY"


def preload() -> list[str]:
    """What to preload for the relay; empty when it was not built (no C compiler)."""
    override = os.environ.get(LIBRARY_ENV)
    if override == "none":
        return []
    if override:
        return [p for p in override.split(":") if p]
    return [str(LIBRARY)] if LIBRARY.exists() else []
