"""Sans-I/O framing: bytes in -> messages out, messages in -> bytes out.

A frame is a 4-byte big-endian payload length followed by a msgpack map
``{"t": tag, field: value, ...}``. Anything that is not a well-typed message of
a known tag is a `ProtocolError`, never another exception, and the buffer never
holds more than one frame beyond what the caller has fed.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

import msgpack

from mirrord.protocol.messages import MAX_FRAME, MESSAGES, Data, Message

_LEN = struct.Struct(">I")
_Check = Callable[[Any], bool]


class ProtocolError(Exception):
    """The peer broke the protocol; `code` is a short machine-readable reason."""

    def __init__(self, message: str, code: str = "protocol") -> None:
        super().__init__(message)
        self.code = code


def _checker(hint: Any) -> _Check:
    """Turn a type hint of a message field into a predicate on decoded msgpack values."""
    origin = typing.get_origin(hint)
    if hint is int:
        return lambda v: type(v) is int
    if hint is bool:
        return lambda v: type(v) is bool
    if hint in (str, bytes):
        return lambda v: type(v) is hint
    if hint is type(None):
        return lambda v: v is None
    if origin in (typing.Union, types.UnionType):
        options = [_checker(a) for a in typing.get_args(hint)]
        return lambda v: any(check(v) for check in options)
    if origin is list:
        (item,) = typing.get_args(hint)
        check_item = _checker(item)
        return lambda v: type(v) is list and all(check_item(x) for x in v)
    if origin is tuple:
        checks = [_checker(a) for a in typing.get_args(hint)]
        return lambda v: (
            type(v) in (list, tuple)
            and len(v) == len(checks)
            and all(c(x) for c, x in zip(checks, v, strict=True))
        )
    if origin is dict:
        check_key, check_value = (_checker(a) for a in typing.get_args(hint))
        return lambda v: (
            type(v) is dict and all(check_key(k) and check_value(x) for k, x in v.items())
        )
    raise TypeError(f"no wire check for {hint!r}")


def _to_wire(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class _Schema:
    """How one message class is checked and built."""

    def __init__(self, cls: type[Message]) -> None:
        hints = typing.get_type_hints(cls)
        self.cls = cls
        names = [f.name for f in dataclasses.fields(cls)]
        self.fields = [(name, _checker(hints[name])) for name in names]
        self.field_names = names
        # msgpack has no tuple: give back the tuples the message was built with
        self.tuple_lists = {
            name
            for name in names
            if typing.get_origin(hints[name]) is list
            and typing.get_origin(typing.get_args(hints[name])[0]) is tuple
        }
        self.names = frozenset(names) | {"t"}

    def build(self, obj: dict[Any, Any]) -> Message:
        if obj.keys() != self.names:
            missing = sorted(self.names - obj.keys())
            extra = sorted(map(str, obj.keys() - self.names))
            raise ProtocolError(
                f"{self.cls.TAG}: bad fields (missing {missing}, unexpected {extra})"
            )
        values = {}
        for name, check in self.fields:
            value = obj[name]
            if not check(value):
                raise ProtocolError(f"{self.cls.TAG}.{name}: wrong type {type(value).__name__}")
            values[name] = [tuple(x) for x in value] if name in self.tuple_lists else value
        return self.cls(**values)


_SCHEMAS: dict[str, _Schema] = {}


def _schema(tag: str) -> _Schema | None:
    """The schema of a registered tag, built on first use (message modules add tags)."""
    schema = _SCHEMAS.get(tag)
    if schema is None and tag in MESSAGES:
        schema = _SCHEMAS[tag] = _Schema(MESSAGES[tag])
    return schema


def encode(msg: Message, max_frame: int = MAX_FRAME) -> bytes:
    """One frame for `msg`; ProtocolError if it is larger than a peer accepts (a sender
    must split what can be split, and fail the one request that cannot)."""
    body: dict[str, Any] = {"t": msg.TAG}
    schema = _schema(msg.TAG)
    assert schema is not None, f"unregistered message {msg.TAG}"
    for name in schema.field_names:
        body[name] = _to_wire(getattr(msg, name))
    payload = msgpack.packb(body, use_bin_type=True)
    if len(payload) > max_frame:
        raise ProtocolError(
            f"{msg.TAG}: a frame of {len(payload)} bytes is over the limit of {max_frame}",
            "too_large",
        )
    return _LEN.pack(len(payload)) + payload


_DATA_KEYS = b"\x83\xa1t\xa4data\xa4conn"


_INT_PREFIX = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_BIN_PREFIX = {0xC4: 1, 0xC5: 2, 0xC6: 4}


def _data_frame(buf: bytearray, start: int, end: int) -> Data | None:
    """The Data message of frame `buf[start:end]` if it has exactly the shape that
    data_frame_header gives (every sender's), read without msgpack and with one copy of
    its payload; None for anything else (the general decoder then decides)."""
    pos = start + len(_DATA_KEYS)
    if end - start < len(_DATA_KEYS) + 7 or buf[start:pos] != _DATA_KEYS:
        return None
    marker = buf[pos]
    if marker < 0x80:
        conn, pos = marker, pos + 1
    elif (size := _INT_PREFIX.get(marker)) is not None:
        conn, pos = int.from_bytes(buf[pos + 1 : pos + 1 + size], "big"), pos + 1 + size
    else:
        return None
    if buf[pos : pos + 5] != b"\xa4data" or pos + 6 > end:
        return None
    size = _BIN_PREFIX.get(buf[pos + 5], 0)
    if not size:
        return None
    length = int.from_bytes(buf[pos + 6 : pos + 6 + size], "big")
    data_start = pos + 6 + size
    if data_start + length != end:
        return None
    return Data(conn=conn, data=bytes(buf[data_start:end]))


@functools.lru_cache(maxsize=4096)
def _conn_prefix(conn: int) -> bytes:
    return _DATA_KEYS + msgpack.packb(conn) + b"\xa4data"


def data_frame_header(conn: int, size: int) -> bytes:
    """The frame of a Data message up to its payload: length prefix, map, tag, conn, and
    the bin header of `size` bytes that follow. Lets a sender write the payload without
    copying it into the frame; the frame is what `encode(Data(conn, data))` gives."""
    if size < 256:
        bin_header = b"\xc4" + size.to_bytes(1, "big")
    elif size < 65536:
        bin_header = b"\xc5" + size.to_bytes(2, "big")
    else:
        bin_header = b"\xc6" + size.to_bytes(4, "big")
    head = _conn_prefix(conn) + bin_header
    if len(head) + size > MAX_FRAME:
        raise ProtocolError(f"data: a frame of {len(head) + size} bytes is over the limit")
    return _LEN.pack(len(head) + size) + head


def decode_payload(payload: bytes | memoryview) -> Message:
    """The message in one frame's payload, or ProtocolError."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"undecodable frame: {exc.__class__.__name__}") from None
    if type(obj) is not dict:
        raise ProtocolError("frame is not a map")
    tag = obj.get("t")
    if tag == "data" and len(obj) == 3:  # the hot path: the bytes of relayed connections
        conn, data = obj.get("conn"), obj.get("data")
        if type(conn) is int and type(data) is bytes:
            return Data(conn=conn, data=data)
    schema = _schema(tag) if type(tag) is str else None
    if schema is None:
        raise ProtocolError(f"unknown message type {obj.get('t')!r:.40}")
    return schema.build(obj)


class Codec:
    """Accumulates received bytes and yields whole messages."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0
        self._broken: ProtocolError | None = None

    def encode(self, msg: Message) -> bytes:
        return encode(msg)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next_message(self) -> Message | None:
        """The next whole message, None when more bytes are needed."""
        if self._broken is not None:
            raise self._broken
        if self.buffered < _LEN.size:
            return None
        (length,) = _LEN.unpack_from(self._buf, self._pos)
        if length > self.max_frame:
            self._broken = ProtocolError(
                f"frame of {length} bytes exceeds the limit of {self.max_frame}", "too_large"
            )
            raise self._broken
        start, end = self._pos + _LEN.size, self._pos + _LEN.size + length
        if len(self._buf) < end:
            return None
        data = _data_frame(self._buf, start, end)
        if data is not None:
            self._pos = end
            return data
        payload = bytes(self._buf[start:end])
        self._pos = end
        try:
            return decode_payload(payload)
        except ProtocolError as exc:
            self._broken = exc
            raise

    def __iter__(self) -> Iterator[Message]:
        while (msg := self.next_message()) is not None:
            yield msg
