"""An HTTP/1.x request head as mirrord's filters see it, and two h11 helpers shared by
the agent's filtered steal and the intproxy's request splitter."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

__all__ = ["RequestHead", "buffered_bytes", "raw_headers"]


@dataclass(frozen=True)
class RequestHead:
    """What ``choose`` sees of a request: its head, decoded (latin-1, lossless)."""

    method: str
    target: str
    http_version: str
    headers: list[tuple[str, str]]

    @property
    def path(self) -> str:
        """The target as ``/path?query`` (an absolute-form target reduced to that)."""
        if self.target.startswith("/") or "://" not in self.target:
            return self.target
        parts = urlsplit(self.target)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        name = name.lower()
        return next((v for n, v in self.headers if n.lower() == name), None)

    @classmethod
    def from_h11(cls, event: h11.Request) -> RequestHead:
        return cls(
            method=event.method.decode("latin-1"),
            target=event.target.decode("latin-1"),
            http_version=event.http_version.decode("latin-1"),
            headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw_headers(event)],
        )


def raw_headers(event: h11.Request | h11.Response) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in event.headers.raw_items()]


def buffered_bytes(conn: h11.Connection) -> int:
    """How many received bytes h11 holds unprocessed.

    `trailing_data` copies them; with many small chunks in one read that copy per event turns
    quadratic, so use the buffer's length when this h11 has it where we expect.
    """
    buffer = getattr(conn, "_receive_buffer", None)
    if buffer is not None and hasattr(buffer, "__len__"):
        return len(buffer)
    return len(conn.trailing_data[0])
