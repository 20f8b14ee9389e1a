"""Lab slots: which numbers are taken, by whom, under one machine-wide lock.

A lab takes slot ``s`` (its namespaces ``mrd{s}-*``, its links, its addresses) and writes an
owner record (pid and start time) before it builds anything, so a lab whose creator died is
recognisably stale, and a half-built one is never "unowned".
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mirrord.lab.namespaces import link_exists, netns_names
from mirrord.system.procfs import process_start

MAX_SLOT = 127  # 198.18.{2s+1} must stay <= 198.18.255
STATE_DIR = Path("/run/mirrord-lab")  # lock file + one owner record per slot


@contextlib.contextmanager
def global_lock() -> Iterator[None]:
    # Serialises slot choice and stale cleanup across processes (demo + tests).
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def state_path(slot: int) -> Path:
    return STATE_DIR / f"mrd{slot}.json"


def read_state(slot: int) -> dict[str, Any] | None:
    try:
        data = json.loads(state_path(slot).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_owner(slot: int, tmpdir: Path) -> None:
    """This process owns `slot` (and the lab's folder `tmpdir`)."""
    owner = {"pid": os.getpid(), "start": process_start(os.getpid()), "tmpdir": str(tmpdir)}
    state_path(slot).write_text(json.dumps(owner))


def owner_alive(state: dict[str, Any]) -> bool:
    pid = state.get("pid")
    return isinstance(pid, int) and process_start(pid) == state.get("start")


def free_slot() -> int | None:
    """The first slot nothing uses (call under `global_lock`)."""
    netns = netns_names()
    return next((s for s in range(MAX_SLOT + 1) if not _slot_in_use(s, netns)), None)


def _slot_in_use(slot: int, netns: set[str]) -> bool:
    return (
        f"mrd{slot}-stg" in netns
        or f"mrd{slot}-be" in netns
        or link_exists(f"mrd{slot}h")
        or state_path(slot).exists()
    )


def known_slots() -> set[int]:
    """Slots something of a lab exists for: a namespace, a host link or an owner record."""
    slots = set()
    for name in netns_names():
        if m := re.fullmatch(r"mrd(\d+)-(?:stg|be)", name):
            slots.add(int(m[1]))
    for _, name in socket.if_nameindex():
        if m := re.fullmatch(r"mrd(\d+)h", name):
            slots.add(int(m[1]))
    for path in STATE_DIR.glob("mrd*.json"):
        if m := re.fullmatch(r"mrd(\d+)\.json", path.name):
            slots.add(int(m[1]))
    return slots
