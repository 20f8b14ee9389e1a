"""The agent's accept loop: one session per client, exit after the idle timeout."""

from __future__ import annotations

import logging
import time

import anyio
import anyio.abc

from mirrord.agent.files import FilesFeature
from mirrord.agent.incoming import IncomingFeature
from mirrord.agent.outgoing import OutgoingFeature
from mirrord.agent.session import AgentState, ClientSession, Feature
from mirrord.process.lifecycle import stop_on_signal
from mirrord.protocol import ProtocolError
from mirrord.wire.link import Link

log = logging.getLogger("mirrord.agent")
HANDSHAKE_TIMEOUT = 10.0
#: Everything the agent can do for a client, one feature per concern.
FEATURES: list[type[Feature]] = [OutgoingFeature, IncomingFeature, FilesFeature]


async def handle_client(state: AgentState, stream: anyio.abc.ByteStream) -> None:
    link = Link(stream)
    state.clients += 1
    state.ever_connected = True
    state.last_change = time.monotonic()
    try:
        with anyio.fail_after(HANDSHAKE_TIMEOUT):
            client = await link.accept_handshake(state.token)
        log.info("client %r connected", client)
        async with anyio.create_task_group() as tg:
            session = ClientSession(state, link, tg, FEATURES)
            try:
                await session.serve()
            except ProtocolError as exc:
                log.warning("client %r broke the protocol: %s", client, exc)
                await link.fail(exc)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                log.info("client %r disconnected", client)
            finally:
                await session.aclose()
                tg.cancel_scope.cancel()
    except ProtocolError as exc:
        log.warning("rejected a client: %s", exc)
    except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
        log.warning("client dropped during handshake: %r", exc)
    finally:
        state.clients -= 1
        state.last_change = time.monotonic()
        with anyio.CancelScope(shield=True):
            await link.aclose()


async def serve(listener: anyio.abc.Listener[anyio.abc.ByteStream], state: AgentState) -> None:
    """Serve until no client has been connected for the idle timeout."""
    async with anyio.create_task_group() as tg:
        state.tg = tg
        tg.start_soon(listener.serve, lambda s: handle_client(state, s))
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
