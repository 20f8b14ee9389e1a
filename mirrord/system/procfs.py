"""Facts about processes from /proc, shared by the agent and the intproxy."""

from __future__ import annotations

from pathlib import Path


def process_start(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot); None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: fields start after the last ')'
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])
