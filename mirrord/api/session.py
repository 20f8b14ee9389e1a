"""`mirrord.Session`: the same machinery as the CLI, as a library.

    with mirrord.Session("netns/staging") as staging:
        staging.env["DATABASE_URL"]                 # the target's environment (filtered)
        staging.run([sys.executable, "app.py"])     # a program under mirrord, like the CLI
        with staging.mirror(8080) as live:          # live traffic of the target (notebooks)
            for request in live:
                print(request.method, request.path)
        with staging.activated():                   # this very process, for a while
            requests.get("http://backend.staging.svc:8080/")

The pytest plugin (`mirrord.api.pytest_plugin`) is a thin face over it.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirrord.cli.run import app_environment, read_file_vars
from mirrord.config import ConfigError, MirrordConfig, load_config
from mirrord.errors import MirrordError
from mirrord.launch.processes import stop
from mirrord.launch.start import RunningSession, start_session


class Session:
    def __init__(
        self,
        target: str | None = None,
        *,
        config_file: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        log_level: str = "info",
    ) -> None:
        """`target` and `overrides` (dotted mirrord.json keys) win over the config file."""
        settings = dict(overrides or {})
        if target is not None:
            settings["target"] = target
        try:
            self.config: MirrordConfig = load_config(
                Path(config_file) if config_file else None, overrides=settings
            )
        except ConfigError as exc:
            raise MirrordError(str(exc)) from None
        self.log_level = log_level
        self._running: RunningSession | None = None
        self._env: dict[str, str] | None = None
        self._layer: Any = None

    def start(self) -> Session:
        if self._running is None:
            try:
                file_vars = read_file_vars(self.config)
                self._running = start_session(
                    self.config.target.path or "targetless",
                    self.config.layer_settings(),
                    config=self.config,
                    log_level=self.log_level,
                )
                self._env = app_environment(self.config, self._running, os.environ, file_vars)
            except MirrordError as exc:
                self.close()
                raise MirrordError(str(exc)) from None
        return self

    @property
    def env(self) -> dict[str, str]:
        """The environment a program gets under this session (local + the target's)."""
        self.start()
        assert self._env is not None
        return dict(self._env)

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """subprocess.run under the session: a Python program gets the layer."""
        return subprocess.run(argv, env={**self.env, **kwargs.pop("env", {})}, **kwargs)

    def activate(self) -> None:
        """Route this process's DNS, connections and listeners through the target."""
        from mirrord.client.proxy import ProxyClient
        from mirrord.layer.layer import Layer
        from mirrord.settings.contract import LayerSettings

        self.start()
        assert self._running is not None
        if self._layer is None:
            running = self._running
            self._layer = Layer(
                LayerSettings.from_dict(running.layer_settings),
                ProxyClient(running.proxy_socket, running.proxy_token),
            )
        self._layer.install()

    def deactivate(self) -> None:
        if self._layer is not None:
            self._layer.uninstall()

    @contextmanager
    def activated(self) -> Iterator[Session]:
        self.activate()
        try:
            yield self
        finally:
            self.deactivate()

    def mirror(
        self,
        port: int,
        *,
        http_filter: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Mirror:
        """Copies of the HTTP requests that reach the target's `port`, from now on (the
        target answers its clients as usual). Iterating ends after `timeout` seconds
        without a request, or when the Mirror is closed.

            with staging.mirror(8080, timeout=30) as requests:
                for request in requests:
                    print(request.method, request.path, request.headers.get("user-agent"))
        """
        self.start()
        assert self._running is not None
        return Mirror(self._running, port, http_filter, timeout)

    def close(self) -> None:
        """Undo everything: patches, the intproxy; the agent leaves once idle."""
        self.deactivate()
        running, self._running = self._running, None
        if running is not None:
            stop(running.proxy_pid)
            shutil.rmtree(running.workdir, ignore_errors=True)

    def __enter__(self) -> Session:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class Mirror:
    """A mirror subscription (made at once) and the requests it has copied."""

    def __init__(
        self,
        running: RunningSession,
        port: int,
        http_filter: Mapping[str, Any] | None,
        timeout: float | None,
    ) -> None:
        from mirrord.client.proxy import ProxyClient
        from mirrord.protocol import RequestFailed, Subscribe

        self.port = port
        self.timeout = timeout
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._client = ProxyClient(running.proxy_socket, running.proxy_token)
        reply = self._client.request(
            Subscribe(
                req=0,
                port=port,
                mode="mirror",
                http_filter=json.dumps(dict(http_filter)) if http_filter else "",
                local_host="127.0.0.1",
                local_port=self._listener.getsockname()[1],
                want_fd=False,
                listener=os.fstat(self._listener.fileno()).st_ino,
            )
        )
        if isinstance(reply, RequestFailed):
            self._listener.close()
            raise MirrordError(f"cannot mirror port {port}: {reply.message}")
        self._found: queue.Queue[MirroredRequest] = queue.Queue()
        threading.Thread(
            target=_accept_copies, args=(self._listener, self._found), daemon=True
        ).start()

    def __iter__(self) -> Iterator[MirroredRequest]:
        while True:
            try:
                yield self._found.get(timeout=self.timeout)
            except queue.Empty:
                return

    def close(self) -> None:
        from mirrord.protocol import Unsubscribe

        self._listener.close()
        try:
            self._client.notify(Unsubscribe(port=self.port))
        except OSError:
            pass

    def __enter__(self) -> Mirror:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class MirroredRequest:
    """One HTTP request a client sent to the target, as the target received it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    raw: bytes  # exactly the bytes on the wire


def _accept_copies(listener: socket.socket, found: queue.Queue[MirroredRequest]) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return  # the iteration ended
        threading.Thread(target=_read_copies, args=(conn, found), daemon=True).start()


def _read_copies(conn: socket.socket, found: queue.Queue[MirroredRequest]) -> None:
    from mirrord.http.split import NotHttp, RequestSplitter

    splitter = RequestSplitter()
    with conn:
        try:
            while data := conn.recv(65536):
                for whole in splitter.feed(data):
                    found.put(_parsed(whole.raw))
                    # an answer, as a server would give: the intproxy learns we keep connections
                    conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
        except (OSError, NotHttp):
            return


def _parsed(raw: bytes) -> MirroredRequest:
    import h11

    parser = h11.Connection(h11.SERVER)
    parser.receive_data(raw)
    method = path = ""
    headers: dict[str, str] = {}
    body = b""
    while True:
        event = parser.next_event()
        if isinstance(event, h11.Request):
            method, path = event.method.decode(), event.target.decode()
            headers = {k.decode().lower(): v.decode(errors="replace") for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        else:
            break
    return MirroredRequest(method, path, headers, body, raw)
