"""A framed message link over an anyio byte stream (agent and intproxy side)."""

from __future__ import annotations

import anyio
import anyio.abc

from mirrord.protocol import ClientHandshake, Codec, Error, Message, ProtocolError, ServerHandshake
from mirrord.protocol.codec import encode

READ_SIZE = 256 * 1024


class Link:
    """Sends and receives whole messages; one writer at a time."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self._codec = Codec()
        self._send_lock = anyio.Lock()

    async def send(self, msg: Message) -> None:
        frame = encode(msg)
        async with self._send_lock:
            await self.stream.send(frame)

    async def receive(self) -> Message:
        """The next message; anyio.EndOfStream when the peer is gone."""
        while True:
            msg = self._codec.next_message()
            if msg is not None:
                return msg
            self._codec.feed(await self.stream.receive(READ_SIZE))

    async def fail(self, exc: ProtocolError) -> None:
        """Tell the peer why it is being dropped, best effort."""
        with anyio.move_on_after(1):
            try:
                await self.send(Error(code=exc.code, message=str(exc)))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass

    async def accept_handshake(self, token: str) -> str:
        """Server side of the first exchange; returns the client's name."""
        handshake = ServerHandshake(token)
        try:
            await self.send(handshake.receive(await self.receive()))
        except ProtocolError as exc:
            await self.fail(exc)
            raise
        return handshake.client

    async def handshake(self, token: str, client: str) -> None:
        """Client side of the first exchange."""
        handshake = ClientHandshake(token, client)
        await self.send(handshake.hello)
        handshake.receive(await self.receive())

    async def aclose(self) -> None:
        await self.stream.aclose()
