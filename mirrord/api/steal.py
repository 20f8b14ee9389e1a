"""Stolen requests answered by a WSGI or ASGI callable in this process.

The callable is served by uvicorn in a thread (WSGI through a2wsgi), on a loopback port of its own; a steal
subscription sends it what the target's port receives (all of it, or the requests an
HTTP filter picks, the rest still going to the target). The callable sees the real
client in `REMOTE_ADDR` / `scope["client"]`, as an app under mirrord does.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any, Literal

from mirrord.api.remote import OwnedClient
from mirrord.errors import MirrordError

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

Origin = Callable[[tuple[str, int]], tuple[str, int]]


def is_asgi(handler: Any) -> bool:
    """ASGI apps are coroutine functions or objects with an async __call__ (as uvicorn
    tells them apart); anything else callable is taken for WSGI."""
    call = handler if inspect.isfunction(handler) else getattr(handler, "__call__", None)  # noqa: B004
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(handler)


def _with_origin(app: Any, origin: Origin) -> Any:
    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket") and scope.get("client"):
            scope = {**scope, "client": origin(tuple(scope["client"]))}
        await app(scope, receive, send)

    return asgi


class _Server:
    """uvicorn on 127.0.0.1:<free port>, in a daemon thread, until stop()."""

    def __init__(self, app: Any, lifespan: Literal["auto", "off"]) -> None:
        import uvicorn

        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port: int = self.sock.getsockname()[1]
        self.inode = os.fstat(self.sock.fileno()).st_ino
        config = uvicorn.Config(
            app,
            interface="asgi3",
            loop="asyncio",
            lifespan=lifespan,
            log_config=None,  # leave this process's logging as it is
            log_level="warning",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            self._thread.join(0.02)
        if not self._server.started:
            self.stop()
            raise MirrordError("the steal handler's server did not start (see the log above)")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(STOP_TIMEOUT)
        self.sock.close()


class Steal:
    """A steal subscription whose requests `handler` answers (a context manager)."""

    def __init__(
        self,
        client: OwnedClient,
        port: int,
        handler: Any,
        *,
        http_filter: Mapping[str, Any] | None = None,
        interface: str = "auto",
        on_close: Callable[[Steal], None] = lambda steal: None,
    ) -> None:
        if interface not in ("auto", "wsgi", "asgi"):
            raise ValueError(f"interface must be auto, wsgi or asgi, not {interface!r}")
        asgi = interface == "asgi" or (interface == "auto" and is_asgi(handler))
        if not asgi:
            from a2wsgi import WSGIMiddleware

            handler = WSGIMiddleware(handler)
        self.port = port
        self.http_filter = dict(http_filter or {})
        self._client = client
        self._on_close = on_close
        self._closed = False
        self._server = _Server(_with_origin(handler, self._origin), "auto" if asgi else "off")
        filter_json = json.dumps(self.http_filter) if self.http_filter else ""
        try:
            client.subscribe(port, "steal", filter_json, self._server.sock)
        except MirrordError:
            self._shut()
            raise

    def _origin(self, local: tuple[str, int]) -> tuple[str, int]:
        # a connection from this machine rather than from the target keeps its own address
        return self._client.origin(self._server.port, local[1]) or local

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._shut()
        self._on_close(self)

    def _shut(self) -> None:
        self._server.stop()  # its listening socket is closed...
        self._client.release(self._server.inode)  # ...and so the subscription ends
        self._client.close()

    def __enter__(self) -> Steal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
