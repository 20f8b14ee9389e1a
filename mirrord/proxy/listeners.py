"""The app's listening sockets and the subscriptions they hold at the agent.

A listener is known by its socket's inode, not by a process: reloaders and prefork servers
bind in one process and listen or accept in others that inherited the socket. A
subscription therefore belongs to the listening sockets of its port and ends when none of
them exists any more (the kernel says which sockets are listening), not when the process
that subscribed goes: a worker restarted by a reloader finds the subscription still there,
and connections that arrive meanwhile wait in the listener's backlog.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import anyio.abc

from mirrord.protocol import (
    ListenerInfo,
    ListenerInfoReply,
    Message,
    RegisterListener,
    Subscribe,
    Subscribed,
    Unsubscribe,
)
from mirrord.protocol.messages import with_req
from mirrord.proxy.agent_client import AgentClient
from mirrord.system.procfs import listening_inodes

log = logging.getLogger("mirrord.proxy")
#: Listeners remembered (bound sockets that may never listen are forgotten oldest first).
LISTENER_MEMORY = 4096
#: How often subscriptions are checked for listeners that vanished without a word
#: (closed with os.close, or their last process killed).
SWEEP_INTERVAL = 1.0


@dataclass
class Subscription:
    port: int
    mode: str
    app_host: str
    app_port: int
    http_filter: Any = None  # mirror: which requests the app gets
    listeners: set[int] = field(default_factory=set)


@dataclass
class _Listener:
    requested_port: int
    remote_port: int
    subscribed: int | None = None  # the target's port it holds a subscription for


class Listeners:
    """Which sockets are the app's listeners, and which ports of the target they hold."""

    def __init__(
        self,
        agent: AgentClient,
        pass_fds: bool,
        alive: Callable[[], set[int]] = listening_inodes,
    ) -> None:
        self.agent = agent
        self.pass_fds = pass_fds
        self.subscriptions: dict[int, Subscription] = {}
        self._listeners: OrderedDict[int, _Listener] = OrderedDict()
        self._alive = alive
        self._lock = anyio.Lock()  # one subscribe/unsubscribe conversation at a time

    def register(self, msg: RegisterListener) -> Message:
        known = self._listeners.pop(msg.listener, None)
        if known is not None and known.subscribed is not None:
            self._release(msg.listener, known)  # a reused inode: the old socket is gone
        self._listeners[msg.listener] = _Listener(msg.requested_port, msg.remote_port)
        while len(self._listeners) > LISTENER_MEMORY:
            inode, stale = self._listeners.popitem(last=False)
            self._release(inode, stale)
        return self._info(msg.req, msg.listener)

    def info(self, msg: ListenerInfo) -> Message:
        return self._info(msg.req, msg.listener)

    def _info(self, req: int, inode: int) -> ListenerInfoReply:
        known = self._listeners.get(inode)
        if known is None:
            return ListenerInfoReply(
                req=req, known=False, requested_port=0, remote_port=0, subscribed=False
            )
        return ListenerInfoReply(
            req=req,
            known=True,
            requested_port=known.requested_port,
            remote_port=known.remote_port,
            subscribed=known.subscribed is not None,
        )

    async def subscribe(self, msg: Subscribe) -> Message:
        async with self._lock:
            listener = self._listeners.setdefault(msg.listener, _Listener(msg.local_port, msg.port))
            sub = self.subscriptions.get(msg.port)
            if sub is None:
                want_fd = msg.want_fd and self.pass_fds and self.agent.link.can_pass_fds
                reply = await self.agent.request(replace(msg, want_fd=want_fd, listener=0))
                if not isinstance(reply, Subscribed):
                    return with_req(reply, msg.req)
                sub = self.subscriptions[msg.port] = Subscription(
                    msg.port,
                    msg.mode,
                    msg.local_host,
                    msg.local_port,
                    _mirror_filter(msg) if msg.mode == "mirror" else None,
                )
            # another listener of a subscribed port (IPv6 beside IPv4, a second worker's
            # socket): the agent's subscription is shared, connections go where the first is
            sub.listeners.add(msg.listener)
            listener.subscribed = msg.port
            return Subscribed(req=msg.req, port=msg.port)

    async def sweep(self) -> None:
        """End the subscriptions whose listening sockets are all gone (called when a
        process closed a listener or went away, and every SWEEP_INTERVAL)."""
        if not self.subscriptions:
            return
        alive = self._alive()
        async with self._lock:
            for sub in list(self.subscriptions.values()):
                for inode in list(sub.listeners):
                    if inode not in alive:
                        sub.listeners.discard(inode)
                        gone = self._listeners.get(inode)
                        if gone is not None:
                            gone.subscribed = None
                if not sub.listeners:
                    await self._unsubscribe(sub.port)

    async def run_sweeps(self) -> None:
        while True:
            await anyio.sleep(SWEEP_INTERVAL)
            await self.sweep()

    def _release(self, inode: int, listener: _Listener) -> None:
        sub = self.subscriptions.get(listener.subscribed or -1)
        if sub is not None:
            sub.listeners.discard(inode)

    async def _unsubscribe(self, port: int) -> None:
        if self.subscriptions.pop(port, None) is None:
            return
        log.info("the app's listeners of port %d are gone: unsubscribing", port)
        try:
            await self.agent.link.send(Unsubscribe(port=port))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass


def _mirror_filter(msg: Subscribe) -> Any:
    """The HttpFilter a mirror subscription asked for (the agent checked it already)."""
    config = json.loads(msg.http_filter) if msg.http_filter else {}
    if not any(key != "ports" for key in config):
        return None
    from mirrord.http.filter import HttpFilter

    http_filter = HttpFilter.from_config(config)
    return http_filter if http_filter.applies_to(msg.port) else None
