"""What the CLI shows while a cluster session starts: one phase after the other
(resolving target → creating agent → waiting for it → port-forward → connected), with
the time since the start. A spinner line in a terminal (rich), plain lines otherwise
(logs, CI), on stderr: stdout is the program's."""

from __future__ import annotations

import sys
import time
from typing import IO, Any


class Progress:
    """``step()`` starts a phase, ``done()`` or ``fail()`` ends the display."""

    def __init__(self, stream: IO[str] | None = None, *, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.live = self.stream.isatty() if live is None else live
        self._status: Any = None
        self._phase = ""

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def step(self, text: str) -> None:
        self._phase = text
        if not self.live:
            self._line(f"mirrord: {text} ({self.elapsed():.1f}s)")
            return
        if self._status is None:
            from rich.console import Console

            console = Console(file=self.stream, stderr=True)
            self._status = console.status(_Live(self), spinner="dots")
            self._status.start()

    def done(self, text: str) -> None:
        self._stop()
        self._line(f"mirrord: {text} ({self.elapsed():.1f}s)")

    def fail(self) -> None:
        """The error that follows says what went wrong; the spinner just goes."""
        self._stop()

    def _stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def _line(self, text: str) -> None:
        try:
            print(text, file=self.stream, flush=True)
        except OSError:
            pass


class _Live:
    """The spinner's text, drawn anew at each refresh so the time keeps running."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def __rich__(self) -> str:
        p = self.progress
        return f"mirrord: {p._phase}… [dim]{p.elapsed():.1f}s[/dim]"


class NoProgress(Progress):
    """For sessions that start in an instant (local targets) and for the library."""

    def __init__(self) -> None:
        super().__init__(live=False)

    def step(self, text: str) -> None:
        self._phase = text

    def done(self, text: str) -> None:
        pass
