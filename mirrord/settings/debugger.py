"""Debugger ports: what a debugger listens on or connects to stays on this machine.

As mirrord does (layer-lib/src/debugger_ports.rs): the ports come from
`MIRRORD_IGNORE_DEBUGGER_PORTS` ("5678", "5678,5679", "50000-50100", combined with
commas), and are detected from the command line of a debugger mirrord knows, always for
debugpy and pydevd (developers run `python -m debugpy --listen 5678 app.py` under
mirrord directly) and, for the others, when `MIRRORD_DETECT_DEBUGGER_PORT` names it.
A process that detected ports passes them on to its children in the first variable.

Standard library only: read inside the app by the layer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

IGNORE_ENV = "MIRRORD_IGNORE_DEBUGGER_PORTS"
DETECT_ENV = "MIRRORD_DETECT_DEBUGGER_PORT"
_LOCAL_HOSTS = frozenset({"127.0.0.1", "::1", "localhost", "0.0.0.0", "::", ""})


@dataclass(frozen=True)
class DebuggerPorts:
    ranges: tuple[tuple[int, int], ...] = ()

    @classmethod
    def parse(cls, text: str) -> DebuggerPorts:
        """mirrord's syntax; entries that do not parse are ignored, as mirrord does."""
        ranges = []
        for entry in text.split(","):
            low, sep, high = entry.strip().partition("-")
            try:
                first = int(low)
                last = int(high) if sep else first
            except ValueError:
                continue
            if 0 < first <= last < 65536:
                ranges.append((first, last))
        return cls(tuple(ranges))

    def __str__(self) -> str:
        return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in self.ranges)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def keeps_local(self, host: str, port: int) -> bool:
        """Is (host, port) a debugger's address, to be bound or reached on this machine?"""
        if not self.ranges or host.split("%", 1)[0].lower() not in _LOCAL_HOSTS:
            return False
        return any(a <= port <= b for a, b in self.ranges)

    def merged(self, ports: Sequence[int]) -> DebuggerPorts:
        return DebuggerPorts(self.ranges + tuple((p, p) for p in ports))


def _option(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :]
    return None


def _port_of(address: str | None) -> int | None:
    if not address:
        return None
    host, _, port = address.rpartition(":")
    if host.strip("[]") not in _LOCAL_HOSTS:
        return None  # a debugger on another machine: nothing of ours
    try:
        return int(port)
    except ValueError:
        return None


def runs_debugpy(argv: Sequence[str]) -> bool:
    """`python [-X ...] -m debugpy ...` or `python .../debugpy ...` (VS Code's launcher)."""
    words = [w for w in argv[1:8] if not w.startswith("-X")]
    return (len(words) >= 2 and words[0] == "-m" and words[1] == "debugpy") or any(
        w.rstrip("/").endswith("/debugpy") for w in words[:2]
    )


def is_debugger_helper(argv: Sequence[str]) -> bool:
    """A process that is part of a debugger, never of the app (debugpy's adapter)."""
    return any("debugpy/adapter" in w for w in argv[:3])


def detect(argv: Sequence[str], env: Mapping[str, str]) -> list[int]:
    """Ports of a debugger found in this process's command line."""
    found: list[int] = []
    if runs_debugpy(argv):
        for option in ("--listen", "--connect"):
            port = _port_of(_option(argv, option))
            if port is not None:
                found.append(port)
    elif any("pydevd" in os.path.basename(w) for w in argv[1:3]):
        client, number = _option(argv, "--client"), _option(argv, "--port")
        if client is not None and number is not None and number.isdigit():
            found.append(int(number))
    return found


def from_process(argv: Sequence[str], env: MutableMapping[str, str]) -> DebuggerPorts:
    """This process's debugger ports; detected ones are passed on to children in `env`."""
    ports = DebuggerPorts.parse(env.get(IGNORE_ENV, ""))
    detected = detect(argv, env)
    if detected:
        ports = ports.merged(detected)
        env[IGNORE_ENV] = str(ports)
        env.pop(DETECT_ENV, None)
    return ports
