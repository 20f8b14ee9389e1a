"""The start-up progress of cluster sessions: plain lines when not a terminal, a spinner
that goes away in one."""

from __future__ import annotations

import io
import os
import pty
import re

from mirrord.launch.progress import Progress


def test_plain_lines_with_the_time_since_the_start() -> None:
    out = io.StringIO()
    progress = Progress(out)
    progress.step("resolving target deployment/x")
    progress.step("creating agent")
    progress.done("connected to pod ns/x-1, container main")
    lines = out.getvalue().splitlines()
    assert [re.sub(r" \(\d+\.\ds\)$", "", line) for line in lines] == [
        "mirrord: resolving target deployment/x",
        "mirrord: creating agent",
        "mirrord: connected to pod ns/x-1, container main",
    ]


def test_a_terminal_gets_a_spinner_and_one_final_line() -> None:
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as tty:
        progress = Progress(tty)
        assert progress.live
        progress.step("creating agent")
        progress.step("waiting for agent job ns/mirrord-agent-x")
        progress.done("connected to pod ns/x-1, container main")
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    text = shown.decode(errors="replace")
    assert "waiting for agent job ns/mirrord-agent-x" in text  # drawn while it ran
    # the spinner line is erased (cursor up, erase line) before the last line is printed
    last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text.replace("\r", "\n")).strip().splitlines()[-1]
    assert re.fullmatch(r"mirrord: connected to pod ns/x-1, container main \(\d+\.\ds\)", last)
