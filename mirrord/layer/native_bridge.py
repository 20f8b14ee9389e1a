"""The Python layer beside the native relay in one process.

When the CLI preloaded the relay (LD_PRELOAD) it sees every socket call the interpreter
makes, Python's own and C extensions' (libpq, uvloop, grpc) alike, so it takes them all:
the Python layer then keeps only what the relay does not do (files), and no socket is
handled twice. In a process the relay was told to skip (skip_processes), so is the layer.
Runs inside the user's app: standard library only.
"""

from __future__ import annotations

import os
from typing import Any

#: mirrord_relay_state() of src/process.c
RELAY_OFF, RELAY_ON, RELAY_SKIPPED = 0, 1, 2
_RULES_ENV = "MIRRORD_RELAY_RULES"


def relay_state() -> int:
    """What the relay loaded into this process does (RELAY_OFF when none is)."""
    if _RULES_ENV not in os.environ:
        return RELAY_OFF  # no relay in this session: no need for ctypes
    try:
        import ctypes

        function = ctypes.CDLL(None).mirrord_relay_state
    except (OSError, AttributeError):
        return RELAY_OFF
    function.restype = ctypes.c_int
    function.argtypes = []
    return int(function())


def beside_relay(families: list[Any]) -> list[Any]:
    """The patch families to install: all of them, or only files when the relay is on."""
    if relay_state() != RELAY_ON:
        return families
    from mirrord.layer.files import FilePatches

    return [family for family in families if isinstance(family, FilePatches)]
