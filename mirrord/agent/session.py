"""One client of the agent and the features that answer its requests.

A feature is a class with the request types it `handles`; the session makes one of each
per client, runs each request in its own task (one failing request answers with an
error, it does not end the session), and closes every feature when the client goes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import anyio
import anyio.abc

from mirrord.protocol import Connect, Message, Ping, Pong
from mirrord.protocol.directions import refusal
from mirrord.wire.link import Link
from mirrord.wire.mux import Mux
from mirrord.wire.tasks import TaskSet

log = logging.getLogger("mirrord.agent")


@dataclass
class AgentState:
    """What every session of one agent shares."""

    token: str
    env: dict[str, str]
    idle_timeout: float
    #: before anyone connected (a cluster agent waits for its port-forward); None: idle_timeout
    first_client_timeout: float | None = None
    clients: int = 0
    ever_connected: bool = False
    last_change: float = field(default_factory=time.monotonic)
    next_conn: int = 1
    #: features keep agent-wide state here (e.g. who subscribed to which port)
    shared: dict[str, Any] = field(default_factory=dict)
    #: agent-wide tasks (listeners, sniffers) run here, beyond any one client
    tg: anyio.abc.TaskGroup | None = None

    def close_shared(self) -> None:
        """Release agent-wide resources (iptables rules...); safe to call twice."""
        for service in list(self.shared.values()):
            close = getattr(service, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing %s failed", type(service).__name__)

    def new_conn_id(self) -> int:
        conn, self.next_conn = self.next_conn, self.next_conn + 1
        return conn


class Feature:
    """Per-client state and request handlers of one agent feature."""

    handles: ClassVar[tuple[type[Message], ...]] = ()

    def __init__(self, session: ClientSession) -> None:
        self.session = session

    async def handle(self, msg: Any) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        """The client is gone: release what this feature holds for it."""


class ClientSession:
    """One client (an intproxy or a CLI): its requests and its connections."""

    def __init__(
        self,
        state: AgentState,
        link: Link,
        tg: anyio.abc.TaskGroup,
        features: Sequence[type[Feature]],
    ) -> None:
        self.state = state
        self.link = link
        self.tg = tg
        self.mux = Mux(link, tg)
        self.requests = TaskSet("a request of a client")
        tg.start_soon(self.requests.run)
        self.features = [feature(self) for feature in features]
        self._routes: dict[type[Message], Feature] = {
            kind: feature for feature in self.features for kind in feature.handles
        }
        self.mux.announcements = self._connect_at_once

    def _connect_at_once(self, msg: Message) -> bool:
        """A Connect starts as the link reads it, without waking `serve` first: the app
        waits for this round trip. (Only Connect: other requests keep their order.)"""
        feature = self._routes.get(Connect) if type(msg) is Connect else None
        if feature is None:
            return False
        self.requests.spawn(self.link.guarded, feature.handle, msg, "agent")
        return True

    async def serve(self) -> None:
        while True:
            msg = await self.link.receive()  # connection frames went to the Mux already
            feature = self._routes.get(type(msg))
            if feature is not None:  # (a Connect too, if it came with the handshake)
                self.requests.spawn(self.link.guarded, feature.handle, msg, "agent")
            elif isinstance(msg, Ping):
                await self.link.send(Pong(seq=msg.seq))
            else:
                # not ours to take: a request gets an error, the client's link goes on
                log.warning("a client sent %s, which the agent does not take", msg.TAG)
                reply = refusal(msg, "the agent")
                if reply is not None:
                    await self.link.send(reply)

    async def reply_failure(self, msg: Any, code: int, text: str, kind: str = "os") -> None:
        await self.link.reply_failure(msg.req, code, text, kind)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for feature in self.features:
                try:
                    await feature.aclose()
                except Exception:
                    log.exception("closing %s failed", type(feature).__name__)
            await self.mux.close_all()
