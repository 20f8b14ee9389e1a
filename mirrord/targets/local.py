"""Local targets: what `pid/N`, `netns/NAME` and `targetless` name on this host."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from mirrord.system import namespaces
from mirrord.system.procfs import process_start


class TargetError(ValueError):
    pass


@dataclass(frozen=True)
class LocalTarget:
    kind: str  # "pid" | "netns" | "targetless"
    pid: int | None = None
    netns: str | None = None

    @classmethod
    def parse(cls, text: str) -> LocalTarget:
        text = text.strip()
        if text in ("", "targetless"):
            return cls("targetless")
        if m := re.fullmatch(r"pid/(\d+)", text):
            pid = int(m.group(1))
            if not Path(f"/proc/{pid}").is_dir():
                raise TargetError(f"target pid/{pid}: no such process")
            return cls("pid", pid=pid)
        if m := re.fullmatch(r"netns/([A-Za-z0-9_.-]+)", text):
            name = m.group(1)
            if not Path(f"/run/netns/{name}").exists():
                raise TargetError(f"target netns/{name}: no such network namespace (ip netns list)")
            return cls("netns", netns=name)
        raise TargetError(f"unknown target {text!r}: expected pid/PID, netns/NAME or targetless")

    def process(self) -> int | None:
        """The process whose environment the app gets."""
        if self.kind == "pid":
            return self.pid
        if self.kind == "netns":
            return oldest_process_in(f"/run/netns/{self.netns}")
        return None

    def enter(self) -> None:
        if self.kind == "pid":
            assert self.pid is not None
            namespaces.enter_pid(self.pid)
        elif self.kind == "netns":
            assert self.netns is not None
            # the main process's mount namespace: its /etc/netns binds and its files
            namespaces.enter_named_netns(self.netns, self.process())


def oldest_process_in(netns_path: str) -> int | None:
    """The longest-running process of a network namespace (its main service)."""
    best: tuple[int, int] | None = None
    me = os.getpid()
    for pid in namespaces.pids_in_netns(netns_path):
        if pid == me:
            continue
        started = process_start(pid)
        if started is None:
            continue  # gone meanwhile, or a zombie
        if best is None or (started, pid) < best:
            best = (started, pid)
    return best[1] if best else None


def read_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env
