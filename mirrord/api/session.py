"""`mirrord.Session`: the staging target as objects in Python code.

    with mirrord.Session(target="netns/staging") as s:   # config keys as kwargs, or config=
        s.env["DATABASE_URL"]                       # the environment a program gets here
        s.read_text("/app/config/settings.yaml")    # the target's files
        s.resolve("inventory.staging.svc")          # its DNS
        s.get("http://inventory:8080/items")        # HTTP from it (an httpx.Response)
        s.connect(("inventory", 8080))              # a socket connected from it
        for req in s.mirror(8080).http(): ...       # live copies of its incoming requests
        with s.steal(8080, http_filter={"header_filter": "x-user: me"}, handler=app): ...
        with s.activate(): ...                      # this very process, for a while
        s.run([sys.executable, "app.py"])           # a program under mirrord, as the CLI runs it

The same machinery as the CLI: `start()` joins or starts the target's agent and starts
an intproxy for this session; everything above goes through it. `AsyncSession`
(mirrord.api.async_session) is this class run in worker threads; the pytest plugin and
the notebook extension are faces over it too.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirrord.api.mirror import DEFAULT_BUFFER, Mirror, MirrorFeed
from mirrord.api.remote import OwnedClient, TargetIO
from mirrord.config import ConfigError, MirrordConfig, load_config
from mirrord.errors import AgentFailed, ConfigInvalid, MirrordError, NotRoot, TargetNotFound
from mirrord.launch.environment import app_environment, read_file_vars
from mirrord.launch.processes import stop
from mirrord.launch.start import RunningSession, start_session

if TYPE_CHECKING:
    import httpx

    from mirrord.api.steal import Steal

#: The one session whose layer is installed in this process (patches are process-wide).
_active: Session | None = None
_active_lock = threading.Lock()


class Session:
    def __init__(
        self,
        target: str | None = None,
        *,
        config: str | Path | Mapping[str, Any] | None = None,
        config_file: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        log_level: str = "info",
        **keys: Any,
    ) -> None:
        """`config` is a mirrord.json path or its content as a dict; `keys` are its top
        keys (`feature={...}`, `agent={...}`) and `overrides` dotted ones
        (`{"feature.env.exclude": "SECRET_*"}`). Each wins over the one before: the
        config (or `config_file`), `MIRRORD_*` variables, `overrides`, `keys`, `target`."""
        if isinstance(config, Mapping):
            settings: dict[str, Any] = dict(config)
        else:
            settings, config_file = {}, config_file or config
        settings.update(overrides or {})
        settings.update(keys)
        if target is not None:
            settings["target"] = target
        try:
            self.config: MirrordConfig = load_config(
                Path(config_file) if config_file else None, overrides=settings
            )
        except ConfigError as exc:
            raise ConfigInvalid(str(exc)) from None
        self.log_level = log_level
        self._running: RunningSession | None = None
        self._env: dict[str, str] | None = None
        self._io: TargetIO | None = None
        self._http: httpx.Client | None = None
        self._layer: Any = None
        self._activations: list[Activation] = []
        self._feeds: dict[int, MirrorFeed] = {}
        self._open: list[Any] = []  # mirrors, steals, activations: closed with the session
        self._lock = threading.RLock()

    @property
    def target(self) -> str:
        return self.config.target.path or "targetless"

    def __repr__(self) -> str:
        state = f"intproxy pid {self._running.proxy_pid}" if self._running else "not started"
        return f"<mirrord.Session {self.target}: {state}>"

    # ---- life

    def start(self) -> Session:
        """Join or start the target's agent and start this session's intproxy."""
        with self._lock:
            if self._running is None:
                try:
                    file_vars = read_file_vars(self.config)
                    self._running = start_session(
                        self.target,
                        self.config.layer_settings(),
                        config=self.config,
                        log_level=self.log_level,
                    )
                    self._env = app_environment(self.config, self._running, os.environ, file_vars)
                except (TargetNotFound, NotRoot, ConfigInvalid):
                    self.close()
                    raise
                except MirrordError as exc:
                    self.close()
                    summary, _, tail = str(exc).partition("\n")
                    raise AgentFailed(summary, tail) from None
                client = self._client()
                self._io = TargetIO(client)
        return self

    @property
    def started(self) -> bool:
        return self._running is not None

    def _client(self) -> OwnedClient:
        running = self._started()
        return OwnedClient(running.proxy_socket, running.proxy_token)

    def _started(self) -> RunningSession:
        if self._running is None:
            self.start()
        assert self._running is not None
        return self._running

    @property
    def io(self) -> TargetIO:
        self._started()
        assert self._io is not None
        return self._io

    def close(self) -> None:
        """Undo everything: patches, subscriptions, servers, the intproxy. The agent
        leaves by itself once no session uses it (and takes its iptables rules along)."""
        with self._lock:
            for resource in reversed(list(self._open)):
                resource.close()
            if self._http is not None:
                self._http.close()
                self._http = None
            if self._io is not None:
                self._io.client.close()
                self._io = None
            if self._layer is not None:
                self._layer.context.client.close()
                self._layer = None
            running, self._running = self._running, None
        if running is not None:
            stop(running.proxy_pid)
            shutil.rmtree(running.workdir, ignore_errors=True)

    def __enter__(self) -> Session:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def scoped(self) -> Iterator[Session]:
        """Whatever is opened inside (mirrors, steals, activations) is closed on exit;
        the session itself stays. The pytest plugin runs each test in one."""
        before = set(map(id, self._open))
        try:
            yield self
        finally:
            for resource in reversed(list(self._open)):
                if id(resource) not in before:
                    resource.close()

    def _opened(self, resource: Any) -> None:
        with self._lock:
            self._open.append(resource)

    def _closed(self, resource: Any) -> None:
        with self._lock:
            if resource in self._open:
                self._open.remove(resource)

    # ---- the environment and programs

    @property
    def env(self) -> dict[str, str]:
        """The environment a program gets under this session (local < the target's,
        selected as feature.env says), with what loads the layer into a Python program."""
        self._started()
        assert self._env is not None
        return dict(self._env)

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """subprocess.run under the session: a Python program gets the layer."""
        return subprocess.run(argv, env={**self.env, **kwargs.pop("env", {})}, **kwargs)

    # ---- what the target sees

    def read_bytes(self, path: str | os.PathLike[str]) -> bytes:
        """A file of the target, whole. Errors are the OSError a local read raises."""
        return self.io.read_bytes(path)

    def read_text(
        self, path: str | os.PathLike[str], encoding: str = "utf-8", errors: str = "strict"
    ) -> str:
        return self.read_bytes(path).decode(encoding, errors)

    def listdir(self, path: str | os.PathLike[str]) -> list[str]:
        return self.io.listdir(path)

    def stat(self, path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> os.stat_result:
        return self.io.stat(path, follow_symlinks=follow_symlinks)

    def exists(self, path: str | os.PathLike[str]) -> bool:
        return self.io.exists(path)

    def resolve(self, name: str) -> list[str]:
        """The addresses `name` has for the target (its resolv.conf, hosts, DNS servers);
        socket.gaierror when it has none."""
        return self.io.resolve(name)

    def connect(self, address: tuple[str, int], timeout: float | None = None) -> socket.socket:
        """A TCP socket.socket whose connection leaves from the target. With a local
        agent it is the target's own socket; otherwise a relayed one (its peer is then
        the intproxy's relay address)."""
        return self.io.connect(address, timeout)

    def http_client(self, **options: Any) -> httpx.Client:
        """A new httpx.Client whose connections leave from the target (`verify` and any
        httpx.Client option)."""
        from mirrord.api.http_client import target_client

        return target_client(self.io.connect, **options)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """An HTTP request from the target, as httpx.request takes it."""
        with self._lock:
            if self._http is None:
                self._http = self.http_client()
            client = self._http
        return client.request(method, url, **kwargs)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)

    def head(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("HEAD", url, **kwargs)

    # ---- incoming traffic

    def mirror(
        self,
        port: int,
        *,
        http_filter: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        buffer: int = DEFAULT_BUFFER,
    ) -> Mirror:
        """Copies of what reaches the target's `port` from now on (the target answers
        its clients as usual): `.http()` parsed requests, `.raw()` bytes. Several
        Mirrors of one port share one subscription."""
        with self._lock:
            feed = self._feeds.get(port)
            if feed is None:
                feed = self._feeds[port] = MirrorFeed(self._client(), port)
            mirror = Mirror(
                feed,
                http_filter=http_filter,
                timeout=timeout,
                buffer=buffer,
                on_close=self._mirror_closed,
            )
            self._opened(mirror)
        return mirror

    def _mirror_closed(self, mirror: Mirror) -> None:
        with self._lock:
            self._closed(mirror)
            feed = self._feeds.get(mirror.port)
            if feed is not None and feed.remove(mirror):
                del self._feeds[mirror.port]
                feed.close()

    def steal(
        self,
        port: int,
        *,
        handler: Any,
        http_filter: Mapping[str, Any] | None = None,
        interface: str = "auto",
    ) -> Steal:
        """Requests reaching the target's `port` answered by `handler`, a WSGI or ASGI
        callable, in this process: all of them, or those `http_filter` (mirrord's
        http_filter keys) picks while the target keeps the rest. A context manager."""
        from mirrord.api.steal import Steal

        with self._lock:
            if port in self._feeds:
                raise MirrordError(f"port {port} is mirrored by this session: close its mirrors")
            steal = Steal(
                self._client(),
                port,
                handler,
                http_filter=http_filter,
                interface=interface,
                on_close=self._closed,
            )
            self._opened(steal)
        return steal

    # ---- this process

    def activate(self, *, env: bool = False) -> Activation:
        """Route this process's DNS, connections, listeners and (by feature.fs) files
        through the target until the returned Activation is closed (it is a context
        manager; activations nest). `env=True` also puts the target's environment in
        os.environ meanwhile."""
        global _active
        self._started()
        with _active_lock:
            if _active is not None and _active is not self:
                raise MirrordError(f"another mirrord session is active in this process: {_active}")
            if self._layer is None:
                self._layer = self._make_layer()
            if not self._activations:
                self._layer.install()
            _active = self
            activation = Activation(self, self._overlay() if env else None)
            self._activations.append(activation)
        self._opened(activation)
        return activation

    #: the old name, kept for code written against it
    activated = activate

    def _make_layer(self) -> Any:
        from mirrord.layer.layer import Layer
        from mirrord.settings.contract import LayerSettings

        running = self._started()
        return Layer(LayerSettings.from_dict(running.layer_settings), self._client())

    def _overlay(self) -> dict[str, str]:
        """os.environ as a program of this session has it, without what loads the layer."""
        layer_vars = set(self._started().layer_env()) | {"PYTHONPATH"}
        overlay = {k: v for k, v in self.env.items() if k not in layer_vars}
        if "PYTHONPATH" in os.environ:
            overlay["PYTHONPATH"] = os.environ["PYTHONPATH"]
        return overlay

    def _deactivate(self, activation: Activation) -> None:
        global _active
        undone: list[Activation] = []
        with _active_lock:
            if activation not in self._activations:
                return
            # closing an outer activation closes the ones inside it too
            while activation not in undone:
                inner = self._activations.pop()
                inner.restore_env()
                undone.append(inner)
            if not self._activations:
                self._layer.uninstall()
                _active = None
        for inner in undone:
            self._closed(inner)

    def deactivate(self) -> None:
        """Undo every activation of this session."""
        if self._activations:
            self._activations[0].close()

    @property
    def active(self) -> bool:
        return bool(self._activations)


class Activation:
    """The layer installed in this process for a while; `close()` (or leaving the
    `with` block) undoes it, and the environment it changed."""

    def __init__(self, session: Session, env: dict[str, str] | None) -> None:
        self.session = session
        self._saved_env = dict(os.environ) if env is not None else None
        if env is not None:
            _replace_environ(env)

    def restore_env(self) -> None:
        if self._saved_env is not None:
            _replace_environ(self._saved_env)
            self._saved_env = None

    def close(self) -> None:
        self.session._deactivate(self)

    def __enter__(self) -> Session:
        return self.session

    def __exit__(self, *exc: object) -> None:
        self.close()


def _replace_environ(values: Mapping[str, str]) -> None:
    for name in [n for n in os.environ if n not in values]:
        del os.environ[name]
    for name, value in values.items():
        if os.environ.get(name) != value:
            os.environ[name] = value
