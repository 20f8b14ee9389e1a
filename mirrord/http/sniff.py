"""Whether a client's first bytes start an HTTP/1.x request, decided as they arrive.

h11 judges a request only once its head is whole (up to the blank line); a client of
another protocol (TLS, Redis, Postgres...) may never send one, and waiting for it would
hold its bytes forever. The request line tells much earlier. (The agent's filtered steal
has the same check in agent/http_steal.py; the two can become this one.)
"""

from __future__ import annotations

import re

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_REQUEST_LINE = re.compile(_TOKEN + rb"+ [^\x00-\x20\x7f]+ HTTP/1\.[0-9]\r?\n")
_REQUEST_LINE_PREFIX = re.compile(
    _TOKEN + rb"*(?: [^\x00-\x20\x7f]*(?: (?:H(?:T(?:T(?:P(?:/(?:1(?:\.[0-9]?)?)?)?)?)?)?)?)?)?"
)


def sniff(buffer: bytes | bytearray) -> bool | None:
    """True if `buffer` starts an HTTP/1.x request line, False if it cannot, None if it
    cannot tell yet."""
    end = buffer.find(b"\n")
    if end >= 0:
        return _REQUEST_LINE.fullmatch(buffer, 0, end + 1) is not None
    line = bytes(buffer[:-1]) if buffer.endswith(b"\r") else bytes(buffer)
    return None if _REQUEST_LINE_PREFIX.fullmatch(line) else False
