"""Mirroring ports: the sniffer's copy of each client's bytes, to every subscriber, within
a budget (a slow subscriber loses its copy; the capture never waits)."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.abc

from mirrord.agent.delivery import deliver
from mirrord.agent.session import AgentState, ClientSession

log = logging.getLogger("mirrord.agent")


class MirrorBudget:
    """What all mirrored connections of one agent may hold, and what mirroring dropped.

    A mirrored connection whose subscriber reads too slowly is cut (its app sees a reset) once
    it holds `PER_FLOW` bytes, or when all of them together would pass `TOTAL`: the capture
    never waits, and memory stays bounded however many connections there are."""

    PER_FLOW = 16 * 1024 * 1024
    TOTAL = 64 * 1024 * 1024

    def __init__(self) -> None:
        self.held = 0
        self.dropped_bytes = 0
        self.cut_connections = 0

    def stats(self) -> str:
        return (
            f"{self.cut_connections} mirrored connections cut for a slow subscriber,"
            f" {self.dropped_bytes} bytes not delivered"
        )


class MirrorPipe:
    """The agent's end of a mirrored connection: sniffed bytes go out, answers are dropped."""

    datagram = False

    def __init__(self, budget: MirrorBudget | None = None) -> None:
        self.budget = budget or MirrorBudget()
        self.buf = bytearray()
        self.ended = False
        self.broken = False
        self._ready = anyio.Event()

    def feed(self, data: bytes) -> None:
        budget = self.budget
        if self.broken:
            budget.dropped_bytes += len(data)
            return
        if len(self.buf) + len(data) > budget.PER_FLOW or budget.held + len(data) > budget.TOTAL:
            self._cut()
            budget.dropped_bytes += len(data)
        else:
            self.buf += data
            budget.held += len(data)
        self._ready.set()

    def _cut(self) -> None:
        budget = self.budget
        self.broken = True
        budget.cut_connections += 1
        budget.dropped_bytes += len(self.buf)
        self._release()
        log.warning(
            "mirror: a subscriber does not keep up, one connection cut (%s)", budget.stats()
        )

    def _release(self) -> None:
        self.budget.held -= len(self.buf)
        self.buf.clear()

    def finish(self, reset: bool) -> None:
        self.ended = True
        self.broken = self.broken or reset
        self._ready.set()

    async def receive(self, max_bytes: int) -> bytes:
        while not self.buf or self.broken:
            if self.broken:
                self._release()
                raise anyio.BrokenResourceError
            if self.ended:
                raise anyio.EndOfStream
            self._ready = anyio.Event()
            await self._ready.wait()
        chunk = bytes(self.buf[:max_bytes])
        del self.buf[:max_bytes]
        self.budget.held -= len(chunk)
        return chunk

    async def send(self, data: bytes) -> None:
        pass  # the target itself answered the client

    async def send_eof(self) -> None:
        pass

    async def close(self, reset: bool) -> None:
        self._release()
        self.ended = True
        self._ready.set()


class MirrorService:
    """Sniffs subscribed ports in the target and copies each client's bytes to subscribers."""

    def __init__(self, state: AgentState) -> None:
        from mirrord.agent.sniffer import Sniffer

        self.state = state
        self.sniffer = Sniffer([])
        self.budget = MirrorBudget()
        self.subs: dict[int, list[ClientSession]] = {}
        self.pipes: dict[Any, list[MirrorPipe]] = {}
        assert state.tg is not None
        state.tg.start_soon(self._run)

    async def subscribe(self, session: ClientSession, port: int) -> None:
        sessions = self.subs.setdefault(port, [])
        if session not in sessions:
            sessions.append(session)
        self.sniffer.update_ports(self.subs)
        log.info("mirroring port %d", port)

    async def unsubscribe(self, session: ClientSession, port: int) -> None:
        sessions = [s for s in self.subs.get(port, []) if s is not session]
        if sessions:
            self.subs[port] = sessions
        elif self.subs.pop(port, None) is not None:
            self.sniffer.update_ports(self.subs)

    async def drop_session(self, session: ClientSession) -> None:
        for port in list(self.subs):
            await self.unsubscribe(session, port)

    def close(self) -> None:
        self.subs.clear()
        log.info("mirror capture: %s; %s", self.sniffer.stats(), self.budget.stats())
        self.sniffer.close()

    async def _run(self) -> None:
        from mirrord.agent.reassembly import StreamClosed, StreamData, StreamOpened

        assert self.state.tg is not None
        async for event in self.sniffer:
            if isinstance(event, StreamData):
                for pipe in self.pipes.get(event.flow, ()):
                    pipe.feed(event.data)
            elif isinstance(event, StreamOpened):
                flow = event.flow
                pipes = self.pipes[flow] = []
                for session in self.subs.get(flow.dport, ()):
                    pipe = MirrorPipe(self.budget)
                    pipes.append(pipe)
                    # bytes wait in the pipe until the client has heard of the connection;
                    # a client gone meanwhile only loses its copy (deliver says so, not raises)
                    self.state.tg.start_soon(
                        self._deliver, session, pipe, (flow.dst, flow.dport), (flow.src, flow.sport)
                    )
            elif isinstance(event, StreamClosed):
                for pipe in self.pipes.pop(event.flow, ()):
                    pipe.finish(event.reset)

    @staticmethod
    async def _deliver(
        session: ClientSession, pipe: MirrorPipe, target: tuple[str, int], peer: tuple[str, int]
    ) -> None:
        if not await deliver(session, pipe, target, peer, "mirror"):
            await pipe.close(reset=True)
