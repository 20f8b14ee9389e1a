"""Which messages may travel where: one table for every link of a session.

    layer  --requests-->  intproxy  --requests-->  agent
    layer  <--replies---  intproxy  <--replies---  agent (and incoming connections)

A peer that sends what its direction does not carry gets, for a request (it has a `req`),
a RequestFailed reply and the link goes on; anything else is dropped with a warning. Only
frames that cannot be parsed end a link. Sans-I/O: the links consult these sets.
"""

from __future__ import annotations

import errno

from mirrord.protocol.files import (
    FileAccess,
    FileClose,
    FileFstat,
    FileListDir,
    FileMkdir,
    FileOpen,
    FileRead,
    FileReadlink,
    FileRename,
    FileRmdir,
    FileStat,
    FileTruncate,
    FileUnlink,
    FileWrite,
)
from mirrord.protocol.incoming import (
    ConnInfo,
    ListenerClosed,
    ListenerInfo,
    RegisterListener,
    Subscribe,
    Unsubscribe,
)
from mirrord.protocol.messages import (
    Close,
    Connect,
    Credit,
    Data,
    Eof,
    GetEnv,
    Message,
    Ping,
    RequestFailed,
    Resolve,
)

FILE_REQUESTS: frozenset[type[Message]] = frozenset(
    {
        FileOpen,
        FileRead,
        FileWrite,
        FileTruncate,
        FileClose,
        FileFstat,
        FileStat,
        FileAccess,
        FileListDir,
        FileReadlink,
        FileUnlink,
        FileMkdir,
        FileRmdir,
        FileRename,
    }
)
#: Requests the intproxy passes to the agent as they are (their replies come back alike).
FORWARDED_REQUESTS: frozenset[type[Message]] = FILE_REQUESTS | {Resolve, GetEnv}
#: What a layer may send the intproxy.
LAYER_TO_PROXY: frozenset[type[Message]] = FORWARDED_REQUESTS | {
    Connect,
    Subscribe,
    ConnInfo,
    RegisterListener,
    ListenerInfo,
    ListenerClosed,
    Ping,
}
#: The bytes of relayed connections, both ways on the agent link.
CONNECTION_FRAMES: frozenset[type[Message]] = frozenset({Data, Eof, Close, Credit})
#: What an intproxy (or the CLI) may send the agent.
PROXY_TO_AGENT: frozenset[type[Message]] = (
    FORWARDED_REQUESTS | CONNECTION_FRAMES | {Connect, Subscribe, Unsubscribe, Ping}
)


def refusal(msg: Message, where: str) -> RequestFailed | None:
    """The reply to a request that has no business on this link (None: not a request)."""
    req = getattr(msg, "req", None)
    if not isinstance(req, int):
        return None
    return RequestFailed(
        req=req,
        kind="os",
        errno=errno.EPROTO,
        message=f"{where} does not take {msg.TAG} from this side",
    )
