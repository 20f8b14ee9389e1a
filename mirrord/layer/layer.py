"""The layer: every patch family of a session, installed and removed together.

Runs inside the user's app: standard library, wrapt and msgpack only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from mirrord.client.proxy import ProxyClient
from mirrord.layer.context import Context
from mirrord.layer.dns import DnsPatches
from mirrord.layer.files import FilePatches
from mirrord.layer.incoming import IncomingPatches
from mirrord.layer.native_bridge import (
    RELAY_SKIPPED,
    beside_relay,
    relay_state,
    stand_relay_down,
)
from mirrord.layer.patching import PatchFamily
from mirrord.layer.sockets import SocketPatches
from mirrord.settings import debugger
from mirrord.settings.contract import SETTINGS_ENV, SOCKET_ENV, TOKEN_ENV, LayerSettings
from mirrord.settings.debugger import DebuggerPorts

__all__ = ["SETTINGS_ENV", "SOCKET_ENV", "TOKEN_ENV", "Layer"]


class Layer:
    def __init__(
        self, settings: LayerSettings, client: ProxyClient, debugger: DebuggerPorts | None = None
    ) -> None:
        self.context = Context(settings, client, debugger)
        dns = DnsPatches(self.context)
        all_families: list[PatchFamily] = [
            dns,
            SocketPatches(self.context, dns),
            IncomingPatches(self.context),
            FilePatches(self.context),
        ]
        # a debugger's sockets are told apart by Python frames: the Python layer keeps them
        self.families = beside_relay(all_families, keep_sockets=bool(self.context.debugger))
        self._fork_hook = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Layer | None:
        """The session the CLI described in the environment, or None outside mirrord."""
        path = env.get(SOCKET_ENV)
        if not path or relay_state() == RELAY_SKIPPED:
            return None
        argv = _command_line()
        if debugger.is_debugger_helper(argv):
            stand_relay_down()
            return None  # a debugger's own process: the developer's, never the target's
        settings = LayerSettings.from_json(env.get(SETTINGS_ENV, ""))
        ports = debugger.from_process(argv, os.environ)
        return cls(settings, ProxyClient(path, env.get(TOKEN_ENV, "")), ports)

    def install(self) -> None:
        """Every family, or none: one that fails to install undoes the ones before it."""
        done: list[PatchFamily] = []
        try:
            for family in self.families:
                family.install()
                done.append(family)
        except BaseException:
            for family in reversed(done):
                family.uninstall()
            raise
        if not self._fork_hook:
            # only once: register_at_fork hooks cannot be removed
            os.register_at_fork(after_in_child=self._after_fork)
            self._fork_hook = True

    def uninstall(self) -> None:
        for family in reversed(self.families):
            family.uninstall()

    def _after_fork(self) -> None:
        if self.families[0].installed:
            self.context.client.after_fork()
            try:
                self.context.client.connect()
            except OSError:
                pass  # reported when the child first needs the intproxy


def _command_line() -> list[str]:
    """The process's real argv (sys.argv is not complete yet while site runs)."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [word.decode(errors="replace") for word in raw.split(b"\0")[:-1]]
