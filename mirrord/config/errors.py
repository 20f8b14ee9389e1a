"""The one exception type configuration loading raises."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration problem, rendered as one readable line.

    ``str(err)`` looks like ``mirrord.json:7: feature.network.outgoing.tcp: expected a
    boolean, got "yes"``; the parts are also available as attributes.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.key = key
        parts = []
        if source is not None:
            parts.append(source if line is None else f"{source}:{line}")
        if key:
            parts.append(key)
        parts.append(message)
        # Keep it to one line whatever the inputs contain.
        super().__init__(" ".join(": ".join(parts).split("\n")))
