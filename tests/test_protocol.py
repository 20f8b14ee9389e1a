"""The wire protocol: framing, typed messages, and the handshake (all sans-I/O)."""

from __future__ import annotations

import dataclasses
import socket
import struct
import types
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mirrord.protocol import (
    MAX_FRAME,
    PROTOCOL_VERSION,
    ClientHandshake,
    Close,
    Codec,
    Connected,
    Data,
    Env,
    Error,
    Hello,
    HelloOk,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Resolve,
    Resolved,
    ServerHandshake,
    origins,
)
from mirrord.protocol.codec import decode_payload, encode
from mirrord.protocol.handshake import MIN_VERSION
from mirrord.protocol.messages import MESSAGES

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# msgpack integers: int64 .. uint64
INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)


# --------------------------------------------------------------------------- strategies


def strategy_for(hint: Any) -> st.SearchStrategy[Any]:
    """A strategy for values of a message field, derived from its type hint."""
    origin = typing.get_origin(hint)
    if hint is bool:
        return st.booleans()
    if hint is int:
        return INTS
    if hint is str:
        return st.text(max_size=20)
    if hint is bytes:
        return st.binary(max_size=64)
    if hint is type(None):
        return st.none()
    if origin in (typing.Union, types.UnionType):
        return st.one_of([strategy_for(a) for a in typing.get_args(hint)])
    if origin is list:
        (item,) = typing.get_args(hint)
        return st.lists(strategy_for(item), max_size=4)
    if origin is tuple:
        return st.tuples(*(strategy_for(a) for a in typing.get_args(hint)))
    if origin is dict:
        key, value = typing.get_args(hint)
        return st.dictionaries(strategy_for(key), strategy_for(value), max_size=4)
    raise TypeError(f"no test strategy for {hint!r}: extend strategy_for")


def message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


MESSAGE_CLASSES = sorted(MESSAGES.values(), key=lambda c: c.TAG)
ANY_MESSAGE = st.one_of([message_strategy(cls) for cls in MESSAGE_CLASSES])

# anything msgpack can carry (map keys: hashable scalars only)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    INTS,
    st.floats(allow_nan=False),
    st.text(max_size=10),
    st.binary(max_size=10),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
)
_KEYS = st.one_of(st.none(), st.booleans(), INTS, st.text(max_size=10), st.binary(max_size=10))
MSGPACK_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=12,
)


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def packed_frame(obj: Any) -> bytes:
    return frame(msgpack.packb(obj, use_bin_type=True))


def wire_map(msg: Message) -> dict[str, Any]:
    """The map a message travels as (tuples become msgpack arrays)."""
    body: dict[str, Any] = {"t": msg.TAG}
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        body[f.name] = (
            [list(x) if isinstance(x, tuple) else x for x in value]
            if isinstance(value, list)
            else value
        )
    return body


def assert_same(actual: Any, expected: Any) -> None:
    """Equal, and of exactly the same types all the way down (1 != True, [] != ())."""
    assert type(actual) is type(expected), (actual, expected)
    if dataclasses.is_dataclass(expected):
        for f in dataclasses.fields(expected):
            assert_same(getattr(actual, f.name), getattr(expected, f.name))
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_same(a, e)
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for k in expected:
            assert_same(actual[k], expected[k])
    else:
        assert actual == expected


def drain(codec: Codec) -> list[Message]:
    out = []
    while (msg := codec.next_message()) is not None:
        out.append(msg)
    return out


def feed_chunks(codec: Codec, data: bytes, cuts: list[int]) -> list[Message]:
    """Feed `data` split at `cuts`, draining after every chunk."""
    out: list[Message] = []
    bounds = [0, *sorted(set(cuts)), len(data)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        codec.feed(data[start:end])
        out.extend(drain(codec))
    return out


def assert_broken_for_good(codec: Codec, first: ProtocolError) -> None:
    """A broken codec raises the same error again, whatever it is fed next."""
    for more in (b"", encode(Ping(seq=1)), b"\x00" * 8):
        codec.feed(more)
        with pytest.raises(ProtocolError) as again:
            codec.next_message()
        assert again.value.code == first.code
        assert str(again.value) == str(first)
    with pytest.raises(ProtocolError):
        list(codec)


def assert_messages_or_protocol_error(codec: Codec, data: bytes, cuts: list[int]) -> None:
    """Feeding `data` yields only messages or a ProtocolError (and then it stays broken)."""
    try:
        msgs = feed_chunks(codec, data, cuts)
    except ProtocolError as exc:
        assert isinstance(exc.code, str) and exc.code
        assert_broken_for_good(codec, exc)
    else:
        assert all(isinstance(m, Message) and type(m) in MESSAGES.values() for m in msgs)


# --------------------------------------------------------------------------- messages


def test_every_message_type_is_registered_under_its_tag() -> None:
    import mirrord.protocol as proto

    exported = {
        obj
        for obj in vars(proto).values()
        if isinstance(obj, type) and issubclass(obj, Message) and obj is not Message
    }
    assert exported == set(MESSAGES.values())
    for tag, cls in MESSAGES.items():
        assert tag == cls.TAG and tag
        assert issubclass(cls, Message) and cls is not Message
        assert dataclasses.is_dataclass(cls)
    assert len({cls.TAG for cls in MESSAGES.values()}) == len(MESSAGES)


@settings(SETTINGS, max_examples=20)
@given(msg=ANY_MESSAGE)
def test_messages_are_frozen(msg: Message) -> None:
    name = dataclasses.fields(msg)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(msg, name, getattr(msg, name))


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.TAG)
@SETTINGS
@given(data=st.data())
def test_each_message_type_round_trips(cls: type[Message], data: st.DataObject) -> None:
    msg = data.draw(message_strategy(cls))
    wire = encode(msg)
    (length,) = struct.unpack(">I", wire[:4])
    assert length == len(wire) - 4
    assert msgpack.unpackb(wire[4:], raw=False) == wire_map(msg)
    assert Codec().encode(msg) == wire

    codec = Codec()
    codec.feed(wire)
    decoded = codec.next_message()
    assert_same(decoded, msg)
    assert decoded == msg
    assert codec.next_message() is None
    assert codec.buffered == 0


@SETTINGS
@given(
    msgs=st.lists(ANY_MESSAGE, max_size=12),
    data=st.data(),
)
def test_message_stream_round_trips_in_any_chunking(
    msgs: list[Message], data: st.DataObject
) -> None:
    stream = b"".join(encode(m) for m in msgs)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    codec = Codec()
    got = feed_chunks(codec, stream, cuts)
    assert_same(got, msgs)
    assert codec.buffered == 0
    assert codec.next_message() is None


@SETTINGS
@given(msgs=st.lists(ANY_MESSAGE, min_size=1, max_size=6))
def test_message_stream_round_trips_one_byte_at_a_time(msgs: list[Message]) -> None:
    stream = b"".join(encode(m) for m in msgs)
    codec = Codec()
    got: list[Message] = []
    for i in range(len(stream)):
        codec.feed(stream[i : i + 1])
        got.extend(drain(codec))
        # a message only appears once its last byte arrived
        assert len(got) <= len(msgs)
    assert_same(got, msgs)
    assert codec.buffered == 0


@SETTINGS
@given(msgs=st.lists(ANY_MESSAGE, min_size=1, max_size=8))
def test_one_feed_then_iterate(msgs: list[Message]) -> None:
    codec = Codec()
    codec.feed(bytearray(b"".join(encode(m) for m in msgs)))
    assert_same(list(codec), msgs)
    assert list(codec) == []


def test_feed_accepts_memoryview_and_bytearray() -> None:
    wire = encode(Data(conn=3, data=b"xyz")) + encode(Ping(seq=9))
    codec = Codec()
    codec.feed(memoryview(wire)[:5])
    assert codec.next_message() is None
    codec.feed(bytearray(wire[5:]))
    assert list(codec) == [Data(conn=3, data=b"xyz"), Ping(seq=9)]


def test_partial_frame_waits_and_keeps_its_bytes() -> None:
    wire = encode(Connected(1, 2, "10.0.0.1", 80, "10.0.0.2", 5000))
    codec = Codec()
    for n in (1, 3, 4, len(wire) - 1):
        codec = Codec()
        codec.feed(wire[:n])
        assert codec.next_message() is None
        assert codec.next_message() is None
        assert codec.buffered == n
        codec.feed(wire[n:])
        assert codec.next_message() == Connected(1, 2, "10.0.0.1", 80, "10.0.0.2", 5000)
        assert codec.buffered == 0


def test_buffer_is_reclaimed_as_messages_are_consumed() -> None:
    codec = Codec()
    one = encode(Data(conn=1, data=b"x" * 1000))
    for _ in range(2000):
        codec.feed(one)
        assert codec.next_message() == Data(conn=1, data=b"x" * 1000)
    assert codec.buffered == 0
    # the internal buffer was compacted, not grown to 2000 frames
    assert len(codec._buf) < 4 * len(one)


def test_resolved_gives_back_tuples_and_resolve_port_variants() -> None:
    addrs = [(2, 1, 6, "", "10.0.0.1", 80), (10, 1, 6, "", "::1", 443)]
    codec = Codec()
    for port in (80, "http", None):
        codec.feed(encode(Resolve(1, "example", port, 0, 0, 0, 0)))
    codec.feed(encode(Resolved(req=7, addrs=addrs)))
    got = list(codec)
    assert [m.port for m in got[:3]] == [80, "http", None]  # type: ignore[attr-defined]
    assert_same(got[3], Resolved(req=7, addrs=addrs))
    assert all(type(a) is tuple for a in got[3].addrs)  # type: ignore[attr-defined]


def test_bool_and_int_fields_are_not_confused() -> None:
    codec = Codec()
    codec.feed(encode(Close(conn=1, reset=True)))
    msg = codec.next_message()
    assert type(msg.reset) is bool and type(msg.conn) is int  # type: ignore[union-attr]


# --------------------------------------------------------------------------- fuzzing


@settings(SETTINGS, max_examples=200)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=10))
def test_any_bytes_yield_messages_or_protocol_error(data: bytes, cuts: list[int]) -> None:
    assert_messages_or_protocol_error(Codec(), data, [c for c in cuts if c <= len(data)])


@settings(SETTINGS, max_examples=200)
@given(
    data=st.binary(min_size=4, max_size=200),
    cuts=st.lists(st.integers(0, 204), max_size=6),
)
def test_any_bytes_after_valid_messages(data: bytes, cuts: list[int]) -> None:
    """Garbage after valid frames: the valid messages still come out first."""
    good = encode(Ping(seq=1)) + encode(Data(conn=1, data=b"ok"))
    codec = Codec()
    codec.feed(good)
    assert list(codec) == [Ping(seq=1), Data(conn=1, data=b"ok")]
    assert_messages_or_protocol_error(codec, data, [c for c in cuts if c <= len(data)])


@settings(SETTINGS, max_examples=200)
@given(payload=st.binary(max_size=200), cuts=st.lists(st.integers(0, 204), max_size=6))
def test_valid_header_with_garbage_payload(payload: bytes, cuts: list[int]) -> None:
    wire = frame(payload)
    codec = Codec()
    assert_messages_or_protocol_error(codec, wire, [c for c in cuts if c <= len(wire)])


@settings(SETTINGS, max_examples=200)
@given(value=MSGPACK_VALUES)
def test_any_msgpack_value_in_a_valid_frame(value: Any) -> None:
    assert_messages_or_protocol_error(Codec(), packed_frame(value), [])


@settings(SETTINGS, max_examples=200)
@given(
    tag=st.sampled_from(sorted(MESSAGES)),
    fields=st.dictionaries(st.text(max_size=8), MSGPACK_VALUES, max_size=8),
)
def test_known_tag_with_arbitrary_fields(tag: str, fields: dict[str, Any]) -> None:
    fields["t"] = tag
    codec = Codec()
    codec.feed(packed_frame(fields))
    try:
        msg = codec.next_message()
    except ProtocolError as exc:
        assert_broken_for_good(codec, exc)
    else:
        # only accepted when it really is a well-formed message of that tag
        assert type(msg) is MESSAGES[tag]
        assert wire_map(msg) == fields  # type: ignore[arg-type]


def _valid_maps() -> st.SearchStrategy[tuple[Message, dict[str, Any]]]:
    return ANY_MESSAGE.map(lambda m: (m, wire_map(m)))


@SETTINGS
@given(pair=_valid_maps(), data=st.data())
def test_missing_field_is_rejected(
    pair: tuple[Message, dict[str, Any]], data: st.DataObject
) -> None:
    _, body = pair
    name = data.draw(st.sampled_from(sorted(body)))  # "t" included
    del body[name]
    with pytest.raises(ProtocolError):
        decode_payload(msgpack.packb(body, use_bin_type=True))
    codec = Codec()
    codec.feed(packed_frame(body))
    with pytest.raises(ProtocolError) as exc:
        codec.next_message()
    assert_broken_for_good(codec, exc.value)


@SETTINGS
@given(
    pair=_valid_maps(),
    key=st.one_of(st.text(max_size=8), INTS, st.binary(max_size=4), st.none()),
    value=MSGPACK_VALUES,
)
def test_extra_field_is_rejected(
    pair: tuple[Message, dict[str, Any]], key: Any, value: Any
) -> None:
    _, body = pair
    if key in body:
        return
    body[key] = value
    with pytest.raises(ProtocolError):
        decode_payload(msgpack.packb(body, use_bin_type=True))


@settings(SETTINGS, max_examples=150)
@given(pair=_valid_maps(), data=st.data(), value=MSGPACK_VALUES)
def test_field_of_arbitrary_value(
    pair: tuple[Message, dict[str, Any]], data: st.DataObject, value: Any
) -> None:
    msg, body = pair
    names = [f.name for f in dataclasses.fields(msg)]
    if not names:
        return
    name = data.draw(st.sampled_from(names))
    body[name] = value
    try:
        got = decode_payload(msgpack.packb(body, use_bin_type=True))
    except ProtocolError:
        return
    assert type(got) is type(msg)
    assert wire_map(got) == body


# wrong types that must be rejected, per hint
def _wrong_values(hint: Any) -> list[Any]:
    candidates = [None, True, 1, -1, 1.5, "s", b"b", [], [1], {}, {"k": "v"}, {1: 2}]
    return [v for v in candidates if not _fits(v, hint)]


def _fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint in (int, bool, str, bytes):
        return type(value) is hint
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(hint))
    if origin is list:
        return type(value) is list and all(_fits(x, typing.get_args(hint)[0]) for x in value)
    if origin is dict:
        k, v = typing.get_args(hint)
        return type(value) is dict and all(_fits(a, k) and _fits(b, v) for a, b in value.items())
    if origin is tuple:
        return False  # no candidate is a full tuple
    raise TypeError(hint)


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.TAG)
@settings(SETTINGS, max_examples=20)
@given(data=st.data())
def test_wrong_field_types_are_rejected(cls: type[Message], data: st.DataObject) -> None:
    msg = data.draw(message_strategy(cls))
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        for wrong in _wrong_values(hints[f.name]):
            body = wire_map(msg)
            body[f.name] = wrong
            with pytest.raises(ProtocolError):
                decode_payload(msgpack.packb(body, use_bin_type=True))


@pytest.mark.parametrize(
    "body",
    [
        {"t": "resolved", "req": 1, "addrs": [[2, 1, 6, "", "h"]]},  # short tuple
        {"t": "resolved", "req": 1, "addrs": [[2, 1, 6, "", "h", 80, 0]]},  # long tuple
        {"t": "resolved", "req": 1, "addrs": [[2, 1, 6, "", b"h", 80]]},  # bytes for str
        {"t": "resolved", "req": 1, "addrs": [[2, 1, True, "", "h", 80]]},  # bool for int
        {"t": "resolved", "req": 1, "addrs": [{"a": 1}]},
        {"t": "env", "req": 1, "env": {"A": b"x"}},
        {"t": "env", "req": 1, "env": {b"A": "x"}},
        {"t": "env", "req": 1, "env": [["A", "x"]]},
        {"t": "close", "conn": 1, "reset": 0},
        {"t": "ping", "seq": True},
        {"t": "ping", "seq": 1.0},
        {"t": "data", "conn": 1, "data": "text"},
        {"t": "resolve", "req": 1, "host": "h", "port": 1.5, "family": 0, "type": 0}
        | {"proto": 0, "flags": 0},
        {"t": "Ping", "seq": 1},
        {"t": b"ping", "seq": 1},
        {"t": None},
        {"t": 1, "seq": 1},
        {"t": ""},
        {"seq": 1},
        {},
    ],
)
def test_malformed_maps_are_rejected(body: dict[Any, Any]) -> None:
    codec = Codec()
    codec.feed(packed_frame(body))
    with pytest.raises(ProtocolError) as exc:
        codec.next_message()
    assert exc.value.code == "protocol"
    assert_broken_for_good(codec, exc.value)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # never-used byte
        b"\x81",  # map of 1 with nothing after it
        msgpack.packb(1) + msgpack.packb(2),  # trailing data
        msgpack.packb([{"t": "ping", "seq": 1}]),
        msgpack.packb("ping"),
        msgpack.packb(None),
        b"\x81\xa1t\xa4pi\xffg",  # invalid utf-8 in a str
        b"\x91" * 100_000,  # deep nesting
        b"\xdd\xff\xff\xff\xff",  # array32 declaring 4G items
        b"\xdf\xff\xff\xff\xff",  # map32 declaring 4G entries
        b"\x81\x91\x01\x02",  # an array as a map key: unhashable
        b"\x81\x80\x02",  # a map as a map key
        msgpack.packb({"t": "ping", "seq": 2**64 - 1})[:-1],  # cut inside an int
        b"\xd6\xff\x00\x00",  # malformed timestamp ext
        msgpack.packb(msgpack.ExtType(1, b"x")),
    ],
)
def test_garbage_payloads_are_protocol_errors(payload: bytes) -> None:
    codec = Codec()
    codec.feed(frame(payload))
    with pytest.raises(ProtocolError) as exc:
        codec.next_message()
    assert exc.value.code == "protocol"
    assert_broken_for_good(codec, exc.value)


# --------------------------------------------------------------------------- frame size


def test_oversized_length_fails_before_the_payload_arrives() -> None:
    codec = Codec()
    header = struct.pack(">I", MAX_FRAME + 1)
    codec.feed(header[:3])
    assert codec.next_message() is None
    codec.feed(header[3:])
    with pytest.raises(ProtocolError) as exc:
        codec.next_message()
    assert exc.value.code == "too_large"
    # nothing close to the declared size was ever buffered
    assert codec.buffered == 4
    assert_broken_for_good(codec, exc.value)


@pytest.mark.parametrize("length", [MAX_FRAME + 1, 2 * MAX_FRAME, 2**31, 2**32 - 1])
def test_any_oversized_length_is_too_large(length: int) -> None:
    codec = Codec()
    codec.feed(encode(Ping(seq=1)) + struct.pack(">I", length) + b"partial")
    assert codec.next_message() == Ping(seq=1)
    with pytest.raises(ProtocolError) as exc:
        codec.next_message()
    assert exc.value.code == "too_large"
    assert codec.buffered == 4 + len(b"partial")


@SETTINGS
@given(limit=st.integers(0, 4096), extra=st.integers(1, 2**32 - 1))
def test_custom_limit(limit: int, extra: int) -> None:
    length = min(limit + extra, 2**32 - 1)
    codec = Codec(max_frame=limit)
    codec.feed(struct.pack(">I", length))
    with pytest.raises(ProtocolError) as exc:
        codec.next_message()
    assert exc.value.code == "too_large"


def _data_frame_with_payload(size: int) -> tuple[Data, bytes]:
    """A Data message whose frame payload is exactly `size` bytes."""
    overhead = len(encode(Data(conn=0, data=b"x" * 70_000))) - 4 - 70_000  # bin32 header
    msg = Data(conn=0, data=b"\xab" * (size - overhead))
    wire = encode(msg, max_frame=size)  # a peer that ignores the limit sends such frames
    assert len(wire) - 4 == size
    return msg, wire


def test_a_sender_refuses_a_frame_over_the_limit() -> None:
    msg, _ = _data_frame_with_payload(MAX_FRAME + 1)
    with pytest.raises(ProtocolError) as exc:
        encode(msg)
    assert exc.value.code == "too_large"


def test_frame_exactly_at_the_limit_is_accepted() -> None:
    msg, wire = _data_frame_with_payload(MAX_FRAME)
    codec = Codec()
    codec.feed(wire[:4])
    assert codec.next_message() is None  # waiting, not refused
    codec.feed(wire[4:-1])
    assert codec.next_message() is None
    codec.feed(wire[-1:])
    assert codec.next_message() == msg
    assert codec.buffered == 0


def test_frame_one_above_the_limit_is_refused() -> None:
    _, wire = _data_frame_with_payload(MAX_FRAME + 1)
    codec = Codec()
    codec.feed(wire[:4])
    with pytest.raises(ProtocolError) as exc:
        codec.next_message()
    assert exc.value.code == "too_large"


def test_small_custom_limit_boundary() -> None:
    wire = encode(Pong(seq=5))
    size = len(wire) - 4
    ok = Codec(max_frame=size)
    ok.feed(wire)
    assert ok.next_message() == Pong(seq=5)
    refused = Codec(max_frame=size - 1)
    refused.feed(wire[:4])
    with pytest.raises(ProtocolError) as exc:
        refused.next_message()
    assert exc.value.code == "too_large"


# --------------------------------------------------------------------------- handshake


def _via_wire(msg: Message) -> Message:
    codec = Codec()
    codec.feed(encode(msg))
    got = codec.next_message()
    assert got is not None
    return got


def test_handshake_succeeds_with_right_token() -> None:
    client = ClientHandshake("s3cret", client="layer")
    server = ServerHandshake("s3cret")
    assert not server.done and client.version == 0
    assert client.hello == Hello(version=PROTOCOL_VERSION, token="s3cret", client="layer")
    reply = server.receive(_via_wire(client.hello))
    assert reply == HelloOk(version=PROTOCOL_VERSION)
    assert server.done and server.client == "layer"
    client.receive(_via_wire(reply))
    assert client.version == PROTOCOL_VERSION


@SETTINGS
@given(token=st.text(max_size=40), other=st.text(max_size=40))
def test_wrong_token_is_auth_error(token: str, other: str) -> None:
    server = ServerHandshake(token)
    hello = Hello(version=PROTOCOL_VERSION, token=other, client="c")
    if other == token:
        assert server.receive(hello) == HelloOk(version=PROTOCOL_VERSION)
        return
    with pytest.raises(ProtocolError) as exc:
        server.receive(hello)
    assert exc.value.code == "auth"
    assert not server.done and server.client == ""


@pytest.mark.parametrize("other", ["", "s3cre", "s3cret ", "S3CRET", "s3cret\x00", "s3crét"])
def test_near_miss_tokens_are_refused(other: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        ServerHandshake("s3cret").receive(Hello(version=PROTOCOL_VERSION, token=other, client=""))
    assert exc.value.code == "auth"


@pytest.mark.parametrize(
    "first",
    [Ping(seq=1), HelloOk(version=1), Data(conn=1, data=b"hi"), Error("auth", "no"), Env(1, {})],
)
def test_first_message_not_hello_is_handshake_error(first: Message) -> None:
    server = ServerHandshake("tok")
    with pytest.raises(ProtocolError) as exc:
        server.receive(first)
    assert exc.value.code == "handshake"
    assert not server.done


@pytest.mark.parametrize("version", [MIN_VERSION - 1, -1, -(2**63)])
def test_old_client_version_is_refused(version: int) -> None:
    server = ServerHandshake("tok")
    with pytest.raises(ProtocolError) as exc:
        server.receive(Hello(version=version, token="tok", client="old"))
    assert exc.value.code == "version"
    assert not server.done


def test_old_client_with_wrong_token_is_an_auth_error() -> None:
    with pytest.raises(ProtocolError) as exc:
        ServerHandshake("tok").receive(Hello(version=MIN_VERSION - 1, token="x", client=""))
    assert exc.value.code == "auth"


@pytest.mark.parametrize("version", [PROTOCOL_VERSION + 1, 2**64 - 1])
def test_newer_client_is_answered_with_our_version(version: int) -> None:
    server = ServerHandshake("tok")
    assert server.receive(Hello(version=version, token="tok", client="new")) == HelloOk(
        version=PROTOCOL_VERSION
    )
    assert server.done


@pytest.mark.parametrize("code", ["auth", "version", "handshake", "busy"])
def test_client_sees_error_reply_as_protocol_error_with_its_code(code: str) -> None:
    client = ClientHandshake("tok", "layer")
    with pytest.raises(ProtocolError) as exc:
        client.receive(_via_wire(Error(code=code, message="go away")))
    assert exc.value.code == code
    assert "go away" in str(exc.value)
    assert client.version == 0


@pytest.mark.parametrize("version", [MIN_VERSION - 1, PROTOCOL_VERSION + 1, -5, 2**64 - 1])
def test_client_refuses_unsupported_server_version(version: int) -> None:
    client = ClientHandshake("tok", "layer")
    with pytest.raises(ProtocolError) as exc:
        client.receive(HelloOk(version=version))
    assert exc.value.code == "version"
    assert client.version == 0


@pytest.mark.parametrize("reply", [Ping(seq=1), Hello(1, "tok", "x"), Pong(seq=0)])
def test_client_refuses_other_replies(reply: Message) -> None:
    client = ClientHandshake("tok", "layer")
    with pytest.raises(ProtocolError) as exc:
        client.receive(reply)
    assert exc.value.code == "handshake"
    assert client.version == 0


@given(conn=st.integers(min_value=-(2**63), max_value=2**64 - 1), data=st.binary(max_size=70_000))
def test_data_frames_decode_alike_on_the_fast_path(conn: int, data: bytes) -> None:
    # the relay's frames are read without msgpack where their shape allows: same result
    codec = Codec()
    codec.feed(encode(Data(conn=conn, data=data)) + encode(Pong(seq=1)))
    assert codec.next_message() == Data(conn=conn, data=data)
    assert codec.next_message() == Pong(seq=1)


# --------------------------------------------------------------------------- origin table

ADDRESSES = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)


def canonical(host: str) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.inet_ntop(family, socket.inet_pton(family, host))


PORTS = st.integers(min_value=0, max_value=65535)


@SETTINGS
@given(
    ipv6=st.booleans(),
    port=PORTS,
    app_port=PORTS,
    origin=st.builds(origins.Origin, ADDRESSES, PORTS, ADDRESSES, PORTS, st.booleans()),
)
@example(
    ipv6=False, port=0, app_port=0, origin=origins.Origin("0.0.0.0", 0, "::ffff:0:0", 0, False)
)
def test_an_origin_reads_back_as_written_and_only_for_its_listener(
    ipv6: bool, port: int, app_port: int, origin: origins.Origin
) -> None:
    table = bytearray(origins.TABLE_SIZE)
    assert origins.read_origin(table, ipv6, port, app_port) is None  # never written
    origins.write_origin(table, ipv6, port, app_port, origin)
    # the same addresses, written as the kernel writes them (::ffff:0:0 is ::ffff:0.0.0.0)
    assert origins.read_origin(table, ipv6, port, app_port) == origin._replace(
        remote_host=canonical(origin.remote_host), local_host=canonical(origin.local_host)
    )
    # the other family's slot of that port, and another listener, know nothing of it
    assert origins.read_origin(table, not ipv6, port, app_port) is None
    assert origins.read_origin(table, ipv6, port, (app_port + 1) % 65536) is None


def test_a_slot_that_is_garbage_reads_as_unknown() -> None:
    table = bytearray(origins.TABLE_SIZE)
    offset = 1234 * origins.SLOT_SIZE
    table[offset : offset + origins.SLOT_SIZE] = b"\x90\x1f\x01\x09" + b"\xff" * 44
    assert origins.read_origin(table, False, 1234, 8080) is None  # family 9: not ours
