"""Handing an incoming connection to a client of the agent: announced and relayed, or its
socket itself; a client that is gone is said so, not raised into the agent."""

from __future__ import annotations

import logging
import socket

import anyio
import anyio.abc

from mirrord.agent.session import ClientSession
from mirrord.protocol import IncomingConnection, IncomingFd
from mirrord.wire.handler_end import Handler
from mirrord.wire.mux import Pipe

log = logging.getLogger("mirrord.agent")


#: What a session that went away raises when it is handed a connection.
_SESSION_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, RuntimeError)


async def deliver(
    session: ClientSession,
    end: Pipe | Handler | socket.socket,
    target: tuple[str, int],
    peer: tuple[str, int],
    mode: str,
) -> bool:
    """Announce an incoming connection to a client, then relay it (a socket as it is, a
    handler by calls);
    False if the client is gone (its link closed, its task group ended): the caller
    decides what becomes of it."""
    conn = session.state.new_conn_id()
    try:
        await session.link.send(
            IncomingConnection(
                conn=conn,
                port=target[1],
                mode=mode,
                remote_host=peer[0],
                remote_port=peer[1],
                local_host=target[0],
                local_port=target[1],
            )
        )
        if isinstance(end, socket.socket):
            await session.mux.attach_socket(conn, end)
        elif isinstance(end, Handler):
            session.mux.attach_handler(conn, end)
        else:
            session.mux.attach(conn, end)
    except _SESSION_GONE as exc:
        log.info("a %s connection for a client that is gone: %r", mode, exc)
        return False
    return True


async def hand_over(
    session: ClientSession, conn: socket.socket, target: tuple[str, int], peer: tuple[str, int]
) -> bool:
    """Give a stolen connection's socket to a client on this host (the caller closes its own
    copy); False if the client is gone."""
    try:
        await session.link.send(
            IncomingFd(
                port=target[1],
                remote_host=peer[0],
                remote_port=peer[1],
                local_host=target[0],
                local_port=target[1],
            ),
            fd=conn.fileno(),
        )
    except _SESSION_GONE as exc:
        log.info("a stolen socket for a client that is gone: %r", exc)
        return False
    return True
