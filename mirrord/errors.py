"""Errors mirrord reports as one readable line, never as a traceback."""

from __future__ import annotations


class MirrordError(RuntimeError):
    """A session could not start or went wrong; the CLI prints `mirrord: <message>` and
    exits with status 1, the library raises it."""


class TargetNotFound(MirrordError):
    """The target names nothing that exists here (or is not a target at all)."""


class NotRoot(MirrordError):
    """Entering the target's namespaces needs root."""


class ConfigInvalid(MirrordError):
    """The mirrord config (file, keys or arguments) is wrong."""


class AgentFailed(MirrordError):
    """The agent (or the session's intproxy) did not start; `log_tail` holds the last lines
    of its log, and the message ends with the last of them."""

    def __init__(self, summary: str, log_tail: str = "") -> None:
        self.summary = summary
        self.log_tail = log_tail
        lines = [line.strip(" |") for line in log_tail.splitlines() if line.strip(" |")]
        super().__init__(f"{summary} {lines[-1]}" if lines else summary)
