"""The agent's accept loop: one session per client, exit after the idle timeout."""

from __future__ import annotations

import logging
import socket
import time

import anyio
import anyio.abc

from mirrord.agent.files import FilesFeature
from mirrord.agent.incoming import IncomingFeature
from mirrord.agent.outgoing import OutgoingFeature
from mirrord.agent.session import AgentState, ClientSession, Feature
from mirrord.process.lifecycle import stop_on_signal
from mirrord.wire.link import Link
from mirrord.wire.serve import accept_forever, serve_link

log = logging.getLogger("mirrord.agent")
#: Everything the agent can do for a client, one feature per concern.
FEATURES: list[type[Feature]] = [OutgoingFeature, IncomingFeature, FilesFeature]


async def handle_client(state: AgentState, sock: socket.socket) -> None:
    state.clients += 1
    state.ever_connected = True
    state.last_change = time.monotonic()

    def open_session(link: Link, tg: anyio.abc.TaskGroup, peer: str) -> ClientSession:
        return ClientSession(state, link, tg, FEATURES)

    try:
        await serve_link(sock, state.token, open_session, "agent", native=True)
    finally:
        state.clients -= 1
        state.last_change = time.monotonic()


async def serve(listener: socket.socket, state: AgentState) -> None:
    """Serve until no client has been connected for the idle timeout."""
    async with anyio.create_task_group() as tg:
        state.tg = tg
        tg.start_soon(accept_forever, listener, lambda s: handle_client(state, s))
        tg.start_soon(stop_on_signal, tg.cancel_scope, log)
        while True:
            await anyio.sleep(0.1)
            idle = time.monotonic() - state.last_change
            limit = state.idle_timeout
            if not state.ever_connected and state.first_client_timeout is not None:
                limit = state.first_client_timeout
            if state.clients == 0 and idle >= limit:
                log.info("no client for %.1fs: exiting", idle)
                tg.cancel_scope.cancel()
                return
