"""The wire: length-prefixed msgpack frames, typed messages, a sans-I/O connection.

Imported inside the user's app by the layer: standard library and msgpack only.
"""

from mirrord.protocol.codec import Codec, ProtocolError
from mirrord.protocol.handshake import ClientHandshake, ServerHandshake
from mirrord.protocol.incoming import (
    ConnInfo,
    ConnInfoReply,
    IncomingConnection,
    IncomingFd,
    Subscribe,
    Subscribed,
    Unsubscribe,
)
from mirrord.protocol.messages import (
    MAX_FRAME,
    PROTOCOL_VERSION,
    Close,
    Connect,
    Connected,
    ConnectedFd,
    Credit,
    Data,
    Env,
    Eof,
    Error,
    GetEnv,
    Hello,
    HelloOk,
    Message,
    Ping,
    Pong,
    RequestFailed,
    Resolve,
    Resolved,
)

__all__ = [
    "ConnInfo",
    "ConnInfoReply",
    "IncomingConnection",
    "IncomingFd",
    "Subscribe",
    "Subscribed",
    "Unsubscribe",
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "ClientHandshake",
    "Close",
    "Codec",
    "Connect",
    "Connected",
    "ConnectedFd",
    "Credit",
    "Data",
    "Env",
    "Eof",
    "Error",
    "GetEnv",
    "Hello",
    "HelloOk",
    "Message",
    "Ping",
    "Pong",
    "ProtocolError",
    "RequestFailed",
    "Resolve",
    "Resolved",
    "ServerHandshake",
]
