"""Incoming traffic at the target: stealing ports (iptables) and mirroring them (sniffing).

Services are agent-wide (several clients may subscribe to the same port with different
HTTP filters); each client's subscriptions end with it.
"""

from __future__ import annotations

import errno
import json
import logging
from typing import Any

from mirrord.agent.mirror import MirrorService
from mirrord.agent.session import ClientSession, Feature
from mirrord.agent.steal import StealService
from mirrord.protocol import Subscribe, Subscribed, Unsubscribe

log = logging.getLogger("mirrord.agent")


class IncomingFeature(Feature):
    handles = (Subscribe, Unsubscribe)

    def __init__(self, session: ClientSession) -> None:
        super().__init__(session)
        self.ports: dict[int, str] = {}  # port -> mode

    def _service(self, mode: str) -> StealService | MirrorService:
        shared = self.session.state.shared
        if mode not in shared:
            shared[mode] = (StealService if mode == "steal" else MirrorService)(self.session.state)
        service: StealService | MirrorService = shared[mode]
        return service

    async def handle(self, msg: Subscribe | Unsubscribe) -> None:
        if isinstance(msg, Unsubscribe):
            mode = self.ports.pop(msg.port, None)
            if mode is not None:
                await self._service(mode).unsubscribe(self.session, msg.port)
            return
        if msg.mode not in ("steal", "mirror"):
            await self.session.reply_failure(msg, errno.EINVAL, f"unknown mode {msg.mode!r}")
            return
        try:
            http_filter = _parse_filter(msg.http_filter)
            service = self._service(msg.mode)
            if isinstance(service, StealService):
                await service.subscribe(self.session, msg.port, http_filter, msg.want_fd)
            else:
                await service.subscribe(self.session, msg.port)
        except (OSError, ValueError) as exc:
            code = getattr(exc, "errno", None) or errno.EINVAL
            await self.session.reply_failure(msg, code, str(exc))
            return
        self.ports[msg.port] = msg.mode
        await self.session.link.send(Subscribed(req=msg.req, port=msg.port))

    async def aclose(self) -> None:
        for mode in set(self.ports.values()):
            await self._service(mode).drop_session(self.session)
        self.ports.clear()


def _parse_filter(text: str) -> Any:
    """mirrord's http_filter object; without any filter in it, the port is stolen whole."""
    config = json.loads(text) if text else {}
    if not any(key != "ports" for key in config):
        return None
    from mirrord.http.filter import HttpFilter

    return HttpFilter.from_config(config)
