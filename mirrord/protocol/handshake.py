"""The first exchange: protocol version and session token, as tiny state machines."""

from __future__ import annotations

import hmac

from mirrord.protocol.codec import ProtocolError
from mirrord.protocol.messages import PROTOCOL_VERSION, Error, Hello, HelloOk, Message

#: Oldest client version this side still speaks.
MIN_VERSION = 1


class ServerHandshake:
    """Checks the client's Hello; `receive` returns the reply to send."""

    def __init__(self, token: str) -> None:
        self._token = token
        self.done = False
        self.client = ""

    def receive(self, msg: Message) -> HelloOk:
        if not isinstance(msg, Hello):
            raise ProtocolError(f"expected hello, got {msg.TAG}", "handshake")
        if not hmac.compare_digest(msg.token.encode(), self._token.encode()):
            raise ProtocolError("wrong session token", "auth")
        if msg.version < MIN_VERSION:
            raise ProtocolError(
                f"client speaks protocol {msg.version}, this side needs {MIN_VERSION}+",
                "version",
            )
        self.done = True
        self.client = msg.client
        return HelloOk(version=min(msg.version, PROTOCOL_VERSION))


class ClientHandshake:
    """Builds the Hello and checks the server's answer."""

    def __init__(self, token: str, client: str) -> None:
        self.hello = Hello(version=PROTOCOL_VERSION, token=token, client=client)
        self.version = 0

    def receive(self, msg: Message) -> None:
        if isinstance(msg, Error):
            raise ProtocolError(f"refused: {msg.message}", msg.code)
        if not isinstance(msg, HelloOk):
            raise ProtocolError(f"expected hello_ok, got {msg.TAG}", "handshake")
        if not MIN_VERSION <= msg.version <= PROTOCOL_VERSION:
            raise ProtocolError(f"server chose unsupported protocol {msg.version}", "version")
        self.version = msg.version
