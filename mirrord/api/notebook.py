"""The IPython extension: `%load_ext mirrord`.

    %mirrord connect netns/staging [feature.env.exclude=SECRET_*]   # the notebook's session
    %mirrord status
    live = mirrord.live(port=8080)          # a table that fills as requests arrive
    live.df                                 # what was captured, as a pandas DataFrame
    live.stop()
    %mirrord disconnect

`%mirrord` completes its commands and, after `connect`, the targets of this host.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from mirrord.api.live import Live
from mirrord.api.session import Session
from mirrord.errors import MirrordError

USAGE = "usage: %mirrord connect TARGET [dotted.key=value ...] | status | disconnect"
COMMANDS = ("connect", "status", "disconnect")

#: the session `%mirrord connect` made, which `mirrord.live` uses by default
_session: Session | None = None
_lives: list[Live] = []


def current() -> Session:
    if _session is None:
        raise MirrordError("no session: run %mirrord connect TARGET first")
    return _session


def live(port: int, *, session: Session | None = None, **options: Any) -> Live:
    """A live table of the HTTP requests reaching `port` of the target (see Live)."""
    table = Live(session or current(), port, **options)
    _lives.append(table)
    return table


def connect(target: str, overrides: dict[str, Any] | None = None) -> Session:
    global _session
    disconnect()
    _session = Session(target, overrides=overrides).start()
    return _session


def disconnect() -> None:
    global _session
    session, _session = _session, None
    for table in _lives:
        table.stop()
    _lives.clear()
    if session is not None:
        session.close()


def status() -> str:
    if _session is None:
        return "mirrord: not connected (%mirrord connect TARGET)"
    lines = [f"mirrord: {_session!r}"]
    lines += [f"  {table!r}" for table in _lives]
    return "\n".join(lines)


def _overrides(words: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for word in words:
        key, sep, text = word.partition("=")
        if not sep or not key:
            raise MirrordError(f"expected dotted.key=value, not {word!r}")
        try:
            found[key] = json.loads(text)
        except ValueError:
            found[key] = text  # a plain string
    return found


def mirrord_magic(line: str) -> Session | None:
    """%mirrord connect TARGET [key=value ...] | status | disconnect"""
    from IPython.core.error import UsageError

    words = shlex.split(line)
    try:
        if words[:1] == ["connect"] and len(words) >= 2:
            return connect(words[1], _overrides(words[2:]))
        if words == ["status"]:
            print(status())
            return None
        if words == ["disconnect"]:
            disconnect()
            return None
    except MirrordError as exc:
        raise UsageError(f"mirrord: {exc}") from None  # one line, no traceback
    raise UsageError(USAGE)


def targets() -> list[str]:
    """What `%mirrord connect` can name on this host."""
    try:
        names = sorted(os.listdir("/run/netns"))
    except OSError:
        names = []
    return ["targetless", *(f"netns/{name}" for name in names), *_other_netns_pids()]


def _other_netns_pids(limit: int = 50) -> list[str]:
    """pid/N for processes in a network namespace other than ours (containers...)."""
    try:
        ours = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns/net").st_ino != ours:
                    found.append(f"pid/{entry.name}")
            except OSError:
                continue
        if len(found) >= limit:
            break
    return found


def complete(_shell: Any, event: Any) -> list[str]:
    """IPython's custom completer hook: commands, then targets after `connect`."""
    words = event.line.split()
    typed = "" if event.line.endswith(" ") else words[-1]
    position = len(words) - (1 if typed else 0)  # of the word being completed
    if position == 1:
        found = list(COMMANDS)
    elif position == 2 and words[1] == "connect":
        found = targets()
    else:
        return []
    # IPython completes the text after its last delimiter ("/" is one): give that part
    cut = len(typed) - len(event.symbol)
    return [name[cut:] for name in found if name.startswith(typed)]


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magic_function(mirrord_magic, magic_kind="line", magic_name="mirrord")
    ipython.set_hook("complete_command", complete, str_key="%mirrord")
    if "mirrord" not in ipython.user_ns:
        import mirrord

        ipython.push({"mirrord": mirrord})  # `mirrord.live(...)` without an import


def unload_ipython_extension(ipython: Any) -> None:
    disconnect()
