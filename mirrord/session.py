"""`mirrord.Session`: the same machinery as the CLI, as a library.

    with mirrord.Session("netns/staging") as staging:
        staging.env["DATABASE_URL"]                 # the target's environment (filtered)
        staging.run([sys.executable, "app.py"])     # a program under mirrord, like the CLI
        with staging.activated():                   # this very process, for a while
            requests.get("http://backend.staging.svc:8080/")

The pytest plugin (`mirrord.pytest_plugin`) is a thin face over it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mirrord.cli.errors import CliError
from mirrord.cli.run import app_environment, read_file_vars
from mirrord.cli.session import Session as _Running
from mirrord.cli.session import start_session
from mirrord.config import ConfigError, MirrordConfig, load_config


class MirrordError(RuntimeError):
    """A session could not start (the message is one readable line, as the CLI's)."""


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
        self._running: _Running | None = None
        self._env: dict[str, str] | None = None
        self._layer: Any = None

    def start(self) -> Session:
        if self._running is None:
            try:
                file_vars = read_file_vars(self.config)
                self._running = start_session(
                    self.config.target.path or "targetless",
                    self.config.layer_settings(),
                    log_level=self.log_level,
                )
                self._env = app_environment(self.config, self._running, os.environ, file_vars)
            except CliError as exc:
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
        from mirrord.layer.client import ProxyClient
        from mirrord.layer.context import LayerSettings
        from mirrord.layer.layer import Layer

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

    def close(self) -> None:
        """Undo everything: patches, the intproxy; the agent leaves once idle."""
        self.deactivate()
        running, self._running = self._running, None
        if running is not None:
            _stop(running.proxy_pid)
            shutil.rmtree(running.workdir, ignore_errors=True)

    def __enter__(self) -> Session:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM our intproxy and reap it (it is our child)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
