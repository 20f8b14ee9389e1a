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


def _relay_function(name: str) -> Any:
    """A function the relay loaded into this process exports, or None."""
    if _RULES_ENV not in os.environ:
        return None  # no relay in this session: no need for ctypes
    try:
        import ctypes

        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_int
    function.argtypes = []
    return function


def relay_state() -> int:
    """What the relay loaded into this process does (RELAY_OFF when none is)."""
    function = _relay_function("mirrord_relay_state")
    return RELAY_OFF if function is None else int(function())


def stand_relay_down() -> None:
    """Leave this process's sockets alone (the relay still follows its children)."""
    function = _relay_function("mirrord_relay_stand_down")
    if function is not None:
        function()


def beside_relay(families: list[Any], keep_sockets: bool = False) -> list[Any]:
    """The patch families to install: all of them, or only files when the relay is on.
    `keep_sockets`: this process needs the Python layer's sockets (a debugger runs in it,
    whose connections only Python frames tell apart): the relay stands down instead."""
    if relay_state() != RELAY_ON:
        return families
    if keep_sockets:
        stand_relay_down()
        return families
    from mirrord.layer.files import FilePatches

    return [family for family in families if isinstance(family, FilePatches)]
