"""Local messages between a Link's Python side and its native data plane
(mirrord/native/src/pump.c), over the socket pair that joins them in one process. They
never travel between processes: the pump refuses them from a peer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mirrord.protocol.messages import Message


@dataclass(frozen=True, slots=True)
class PumpAttach(Message):
    """Python -> pump: run connection `conn` over the socket `fd` (now the pump's), with
    `credit` bytes it may send before the peer grants more."""

    TAG: ClassVar[str] = "pump_attach"
    conn: int
    fd: int
    credit: int


@dataclass(frozen=True, slots=True)
class PumpSync(Message):
    """pump -> Python: every frame of `conn` that the pump passed to Python is before this."""

    TAG: ClassVar[str] = "pump_sync"
    conn: int


@dataclass(frozen=True, slots=True)
class PumpReplay(Message):
    """Python -> pump: a frame of an attached connection that reached Python first."""

    TAG: ClassVar[str] = "pump_replay"
    frame: bytes


@dataclass(frozen=True, slots=True)
class PumpSynced(Message):
    """Python -> pump: what Python had of `conn` is replayed; its held frames may go."""

    TAG: ClassVar[str] = "pump_synced"
    conn: int


@dataclass(frozen=True, slots=True)
class PumpReset(Message):
    """Python -> pump: give up on `conn` (the peer is told), if the pump still runs it."""

    TAG: ClassVar[str] = "pump_reset"
    conn: int


@dataclass(frozen=True, slots=True)
class PumpError(Message):
    """pump -> Python: the peer broke the protocol on a connection the pump runs."""

    TAG: ClassVar[str] = "pump_error"
    message: str
