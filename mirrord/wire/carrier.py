"""A Link's byte stream when it is not a plain socket: one channel of a websocket
(a Kubernetes port-forward, see ``mirrord.kube.ws_forward``).

The Link drives a carrier from the event loop's readiness of `fileno()`, as it drives a
socket: `read()` when it is readable, `send()` and `flush()` when it is writable. A
carrier takes a write whole (it frames and encrypts it at once) and keeps what the
socket did not take as its backlog; while it has one, it refuses more (BlockingIOError)
so that the Link queues the rest and applies back-pressure as it does for a socket.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Protocol


class Carrier(Protocol):
    #: the socket under it (for readiness, its family and options; never read from)
    sock: socket.socket
    #: called when the carrier has a backlog the Link did not cause (a pong, TLS records)
    on_backlog: Callable[[], None] | None

    def read(self) -> bytes | memoryview:
        """The stream's bytes that arrived; b"" at its end; BlockingIOError if none yet."""
        ...

    def send(self, parts: list[memoryview]) -> int:
        """Take `parts` whole (their length) or raise BlockingIOError while backlogged."""
        ...

    @property
    def backlogged(self) -> bool: ...

    @property
    def pending(self) -> bool:
        """Bytes that came off the socket before the Link read: read() returns them
        without waiting for readiness."""
        ...

    def flush(self) -> bool:
        """Write what the socket takes of the backlog; True when none is left."""
        ...

    def close(self) -> None: ...
