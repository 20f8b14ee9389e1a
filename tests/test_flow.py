"""Credit-based flow control: SendCredit on one side, ReceiveCredit on the other."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from mirrord.protocol import ProtocolError
from mirrord.protocol.flow import INITIAL_WINDOW, ReceiveCredit, SendCredit
from mirrord.protocol.messages import MAX_CHUNK

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- SendCredit


def test_default_window_holds_several_chunks() -> None:
    assert INITIAL_WINDOW >= MAX_CHUNK
    assert SendCredit().window == INITIAL_WINDOW
    assert ReceiveCredit().window == INITIAL_WINDOW


def test_send_credit_basics() -> None:
    send = SendCredit(window=100)
    assert send.available(1) == 0  # unknown connection: nothing may be sent
    send.open(1)
    assert send.available(1) == 100
    send.spend(1, 60)
    assert send.available(1) == 40
    send.spend(1, 40)
    assert send.available(1) == 0
    send.grant(1, 25)
    assert send.available(1) == 25
    assert send.available(2) == 0  # connections are independent
    send.open(2)
    send.spend(2, 100)
    assert send.available(1) == 25 and send.available(2) == 0


def test_send_credit_forget_and_late_grant() -> None:
    send = SendCredit(window=100)
    send.open(7)
    send.spend(7, 100)
    send.forget(7)
    assert send.available(7) == 0
    send.grant(7, 50)  # a Credit that raced the Close must not resurrect the connection
    assert send.available(7) == 0
    send.forget(7)  # forgetting twice is harmless
    send.open(7)  # a reused id starts with a fresh window
    assert send.available(7) == 100


# --------------------------------------------------------------------------- ReceiveCredit


def test_receive_credit_batches_grants_by_quarter_window() -> None:
    recv = ReceiveCredit(window=100)
    recv.open(1)
    recv.received(1, 100)
    assert recv.delivered(1, 10) == 0
    assert recv.delivered(1, 10) == 0
    assert recv.delivered(1, 4) == 0  # 24 pending: below a quarter
    assert recv.delivered(1, 1) == 25  # 25 pending: a quarter, granted at once
    assert recv.delivered(1, 60) == 60  # big deliveries are granted whole
    assert recv.delivered(1, 15) == 0  # 15 pending again


def test_receive_credit_full_window_then_overrun() -> None:
    recv = ReceiveCredit(window=100)
    recv.open(1)
    recv.received(1, 60)
    recv.received(1, 40)  # exactly the window: fine
    with pytest.raises(ProtocolError):
        recv.received(1, 1)


def test_receive_credit_single_oversized_chunk() -> None:
    recv = ReceiveCredit(window=100)
    recv.open(1)
    with pytest.raises(ProtocolError):
        recv.received(1, 101)


def test_receive_credit_refills_after_grant() -> None:
    recv = ReceiveCredit(window=100)
    recv.open(1)
    recv.received(1, 100)
    assert recv.delivered(1, 30) == 30
    recv.received(1, 30)  # exactly the credit that was granted back
    with pytest.raises(ProtocolError):
        recv.received(1, 1)
    assert recv.delivered(1, 100) == 100
    assert recv.window_of(1) == 100  # no maximum given: a fast reader's window stays


def test_overrun_into_ungranted_delivered_bytes_is_detected() -> None:
    """Bytes delivered but not yet granted back are not credit the peer may use."""
    recv = ReceiveCredit(window=100)
    recv.open(1)
    recv.received(1, 100)
    assert recv.delivered(1, 20) == 0  # batched: the peer still has 0 credit
    with pytest.raises(ProtocolError):
        recv.received(1, 1)


def test_receive_credit_connections_are_independent() -> None:
    recv = ReceiveCredit(window=100)
    recv.open(1)
    recv.open(2)
    recv.received(1, 100)
    recv.received(2, 100)
    with pytest.raises(ProtocolError):
        recv.received(2, 1)
    assert recv.delivered(1, 50) == 50
    assert recv.delivered(2, 10) == 0


def test_receive_credit_forget_and_reopen() -> None:
    recv = ReceiveCredit(window=100)
    recv.open(1)
    recv.received(1, 100)
    assert recv.delivered(1, 10) == 0
    recv.forget(1)
    assert recv.delivered(1, 90) == 0  # forgotten: nothing to grant
    recv.forget(1)
    recv.open(1)  # a reused id starts over: no stale in-flight bytes or pending credit
    recv.received(1, 100)
    assert recv.delivered(1, 24) == 0
    assert recv.delivered(1, 1) == 25


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(
    window=st.integers(1, 1000),
    ops=st.lists(st.tuples(st.sampled_from(["recv", "deliver"]), st.integers(0, 400)), max_size=60),
)
def test_receive_credit_rejects_exactly_what_exceeds_granted_credit(
    window: int, ops: list[tuple[str, int]]
) -> None:
    """A peer may have at most `window` bytes beyond the credit granted back to it."""
    recv = ReceiveCredit(window=window)
    recv.open(1)
    received = delivered = granted = 0
    for op, amount in ops:
        if op == "recv":
            if received + amount - granted > window:
                with pytest.raises(ProtocolError):
                    recv.received(1, amount)
            else:
                recv.received(1, amount)
                received += amount
        else:
            amount = min(amount, received - delivered)
            grant = recv.delivered(1, amount)
            delivered += amount
            assert grant >= 0
            if grant:
                assert grant * 4 >= window  # batched
            granted += grant
        pending = delivered - granted
        assert pending >= 0 and pending * 4 < window


@SETTINGS
@given(
    window=st.integers(4, 2000),
    chunks=st.lists(st.integers(1, 600), min_size=1, max_size=40),
)
def test_respecting_sender_never_trips_and_never_deadlocks(window: int, chunks: list[int]) -> None:
    """Lock-step: send as much as credit allows, deliver it, grant back; all data flows."""
    send, recv = SendCredit(window), ReceiveCredit(window)
    send.open(5)
    recv.open(5)
    for want in chunks:
        left = want
        while left:
            n = min(left, send.available(5))
            assert n > 0, "sender stuck with data to send and no credit"
            send.spend(5, n)
            recv.received(5, n)
            left -= n
            if grant := recv.delivered(5, n):
                send.grant(5, grant)
        # everything sent was delivered: the window is (almost) all back
        assert send.available(5) * 4 >= 3 * window
        assert send.available(5) <= window


class FlowMachine(RuleBasedStateMachine):
    """A sender and a receiver joined by an in-order link in each direction.

    Data frames and Credit frames are in transit independently; the receiver
    buffers what arrived and delivers any part of it to its socket.
    """

    conns = Bundle("conns")

    @initialize(window=st.integers(1, 5000), grows=st.booleans())
    def setup(self, window: int, grows: bool) -> None:
        self.window = window
        self.send = SendCredit(window)
        # a receiver that grows windows (as the Mux's do), on a clock the test moves
        self.clock = FakeClock()
        self.recv = ReceiveCredit(window, window * 8 if grows else None, self.clock)
        self.next_id = 0
        self.open_conns: set[int] = set()
        # per connection
        self.data_wire: dict[int, deque[int]] = {}  # Data frames sender -> receiver
        self.credit_wire: dict[int, deque[int]] = {}  # Credit frames receiver -> sender
        self.buffered: dict[int, int] = {}  # arrived at the receiver, not delivered
        self.sent: dict[int, int] = {}
        self.delivered: dict[int, int] = {}
        self.granted: dict[int, int] = {}  # returned by ReceiveCredit.delivered
        self.credited: dict[int, int] = {}  # Credit frames that reached the sender

    @rule(target=conns)
    def open(self) -> int:
        conn = self.next_id
        self.next_id += 1
        self.send.open(conn)
        self.recv.open(conn)
        self.open_conns.add(conn)
        self.data_wire[conn] = deque()
        self.credit_wire[conn] = deque()
        for d in (self.buffered, self.sent, self.delivered, self.granted, self.credited):
            d[conn] = 0
        return conn

    @rule(conn=conns, data=st.data())
    def send_data(self, conn: int, data: st.DataObject) -> None:
        available = self.send.available(conn)
        if conn not in self.open_conns or available <= 0:
            return
        n = data.draw(st.integers(1, available))
        self.send.spend(conn, n)
        self.sent[conn] += n
        self.data_wire[conn].append(n)

    @rule(conn=conns)
    def data_arrives(self, conn: int) -> None:
        if conn in self.open_conns and self.data_wire[conn]:
            n = self.data_wire[conn].popleft()
            self.recv.received(conn, n)  # a respecting sender never trips this
            self.buffered[conn] += n

    @rule(conn=conns, data=st.data())
    def deliver(self, conn: int, data: st.DataObject) -> None:
        if conn not in self.open_conns or not self.buffered[conn]:
            return
        n = data.draw(st.integers(1, self.buffered[conn]))
        self.buffered[conn] -= n
        self.delivered[conn] += n
        grant = self.recv.delivered(conn, n)
        assert grant >= 0
        if grant:
            assert grant * 4 >= self.window, "grants are batched to a quarter window"
            self.granted[conn] += grant
            self.credit_wire[conn].append(grant)

    @rule(seconds=st.floats(0, 0.1))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    def extra(self, conn: int) -> int:
        """Credit granted beyond delivered bytes: what the window grew by."""
        return self.recv.window_of(conn) - self.window

    @rule(conn=conns)
    def credit_arrives(self, conn: int) -> None:
        if conn in self.open_conns and self.credit_wire[conn]:
            n = self.credit_wire[conn].popleft()
            self.send.grant(conn, n)
            self.credited[conn] += n

    @precondition(lambda self: bool(self.open_conns))
    @rule(data=st.data())
    def flush(self, data: st.DataObject) -> None:
        """Let everything in flight for one connection arrive and be delivered."""
        conn = data.draw(st.sampled_from(sorted(self.open_conns)))
        while self.data_wire[conn] or self.buffered[conn] or self.credit_wire[conn]:
            self.data_arrives(conn)
            if self.buffered[conn]:
                n = self.buffered[conn]
                self.buffered[conn] = 0
                self.delivered[conn] += n
                if grant := self.recv.delivered(conn, n):
                    self.granted[conn] += grant
                    self.credit_wire[conn].append(grant)
            self.credit_arrives(conn)
        assert self.delivered[conn] == self.sent[conn]
        self.check_no_deadlock(conn)

    @rule(conn=consumes(conns))
    def close(self, conn: int) -> None:
        if conn not in self.open_conns:
            return
        self.send.forget(conn)
        self.recv.forget(conn)
        self.open_conns.discard(conn)
        assert self.send.available(conn) == 0
        # frames still in transit for a closed connection are ignored by both sides
        self.send.grant(conn, self.window)
        assert self.send.available(conn) == 0
        assert self.recv.delivered(conn, 1) == 0

    def check_no_deadlock(self, conn: int) -> None:
        assert self.send.available(conn) * 4 >= 3 * self.recv.window_of(conn)
        assert self.send.available(conn) > 0

    @invariant()
    def accounting(self) -> None:
        if not hasattr(self, "window"):
            return
        for conn in self.open_conns:
            available = self.send.available(conn)
            # the sender's view: window minus what is not credited back yet
            assert available == self.window - self.sent[conn] + self.credited[conn]
            assert 0 <= available <= self.recv.window_of(conn)
            # credit granted = bytes delivered (and growth) minus the small batched remainder
            pending = self.delivered[conn] + self.extra(conn) - self.granted[conn]
            assert pending >= 0 and pending * 4 < self.recv.window_of(conn)
            assert self.credited[conn] + sum(self.credit_wire[conn]) == self.granted[conn]
            in_flight = sum(self.data_wire[conn])
            assert self.sent[conn] == in_flight + self.buffered[conn] + self.delivered[conn]
            # quiet connection (nothing in transit, nothing buffered): no deadlock
            if not in_flight and not self.buffered[conn] and not self.credit_wire[conn]:
                self.check_no_deadlock(conn)


TestFlowMachine = FlowMachine.TestCase
TestFlowMachine.settings = settings(
    max_examples=80,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@SETTINGS
@given(
    window=st.integers(1, 1000),
    honest=st.lists(st.integers(0, 300), max_size=10),
    excess=st.integers(1, 1000),
)
def test_peer_overrunning_its_credit_is_caught(window: int, honest: list[int], excess: int) -> None:
    """Whatever was exchanged before, sending beyond the credit held is a ProtocolError."""
    send, recv = SendCredit(window), ReceiveCredit(window)
    send.open(1)
    recv.open(1)
    for want in honest:
        n = min(want, send.available(1))
        send.spend(1, n)
        recv.received(1, n)
        if grant := recv.delivered(1, n):
            send.grant(1, grant)
    with pytest.raises(ProtocolError):
        recv.received(1, send.available(1) + excess)


# --------------------------------------------------------------------------- window growth


def test_a_fast_connection_doubles_its_window_up_to_the_maximum() -> None:
    clock = FakeClock()
    recv = ReceiveCredit(window=100, max_window=400, clock=clock)
    recv.open(1)
    recv.received(1, 100)
    assert recv.delivered(1, 50) == 50
    # a whole window delivered at once: granted back, plus the window it grew by
    assert recv.delivered(1, 50) == 50 + 100
    assert recv.window_of(1) == 200
    recv.received(1, 200)  # the peer may now have 200 in flight
    with pytest.raises(ProtocolError):
        recv.received(1, 1)
    assert recv.delivered(1, 200) == 200 + 200
    assert recv.window_of(1) == 400
    recv.received(1, 400)
    assert recv.delivered(1, 400) == 400  # at the maximum: no more growth
    assert recv.window_of(1) == 400
    recv.forget(1)
    recv.open(1)  # a reused id starts small again
    assert recv.window_of(1) == 100


def test_a_slow_reader_keeps_the_window_it_has() -> None:
    clock = FakeClock()
    recv = ReceiveCredit(window=100, max_window=400, clock=clock)
    recv.open(1)
    for _ in range(5):
        recv.received(1, 100)
        clock.now += 0.03
        assert recv.delivered(1, 50) == 50
        clock.now += 0.03  # a window took 60 ms: not a bulk transfer held back by credit
        assert recv.delivered(1, 50) == 50
    assert recv.window_of(1) == 100
    with pytest.raises(ProtocolError):
        recv.received(1, 101)


def test_windows_grow_within_one_budget_for_all_connections() -> None:
    """Fast connections whose readers then stop must not hold more than the budget."""
    clock = FakeClock()
    recv = ReceiveCredit(window=100, max_window=800, clock=clock, growth_budget=300)
    for conn in (1, 2, 3):
        recv.open(conn)
        for _ in range(3):  # three fast windows: 100 -> 200 -> 400 -> 800, if allowed
            window = recv.window_of(conn)
            recv.received(conn, window)
            recv.delivered(conn, window)
    # the first grew by 100 + 200, and the budget (300) was spent: the others stay
    assert [recv.window_of(c) for c in (1, 2, 3)] == [400, 100, 100]
    recv.forget(1)  # a connection that ends gives its growth back
    recv.received(2, 100)
    recv.delivered(2, 100)
    assert recv.window_of(2) == 200 and recv.grown == 100
