"""Mirroring never waits for a slow subscriber, and its memory is bounded across connections."""

from __future__ import annotations

import anyio
import pytest

from mirrord.agent.mirror import MirrorBudget, MirrorPipe

MIB = 1 << 20


def test_all_mirrored_connections_together_hold_at_most_the_total() -> None:
    budget = MirrorBudget()
    pipes = [MirrorPipe(budget) for _ in range(8)]
    chunk = b"x" * MIB
    for _ in range(15):  # 8 connections x 15 MiB: each under the per-flow bound, 120 MiB in all
        for pipe in pipes:
            pipe.feed(chunk)  # returns at once: the capture never waits
        assert budget.held <= MirrorBudget.TOTAL
    cut = [p for p in pipes if p.broken]
    assert cut and len(cut) < len(pipes)  # some subscribers lost their copy, not all
    assert budget.cut_connections == len(cut)
    assert budget.dropped_bytes == 8 * 15 * MIB - budget.held  # every byte not held is counted
    assert "cut for a slow subscriber" in budget.stats()


def test_one_connection_past_its_own_bound_is_cut_and_its_reader_told() -> None:
    budget = MirrorBudget()
    pipe = MirrorPipe(budget)
    for _ in range(17):
        pipe.feed(b"y" * MIB)
    assert pipe.broken and budget.cut_connections == 1 and budget.held == 0

    async def read() -> None:
        await pipe.receive(65536)

    with pytest.raises(anyio.BrokenResourceError):  # the relay resets the app's connection
        anyio.run(read)


def test_what_a_reader_takes_is_given_back_to_the_budget() -> None:
    budget = MirrorBudget()
    pipe = MirrorPipe(budget)
    pipe.feed(b"z" * 1000)

    async def read() -> bytes:
        return await pipe.receive(600)

    assert anyio.run(read) == b"z" * 600
    assert budget.held == 400
