"""A container target, found the way the agent finds it on a node: by its container id in
``/proc/*/cgroup``, with no container-runtime socket.

Every runtime names a container's cgroup after its id, whatever the cgroup driver:
``/kubepods/burstable/pod<uid>/<id>`` (cgroupfs), ``.../cri-containerd-<id>.scope``
(systemd), ``crio-<id>.scope``, ``/docker/<id>``; inside a cgroup namespace the path is
relative (``/../cri-containerd-<id>.scope``) but still holds it. The container's oldest
process is its main one (whose environment the app gets).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from mirrord.system import namespaces
from mirrord.system.procfs import process_start
from mirrord.targets.local import TargetError

_ID = re.compile(r"[0-9a-f]{12,128}")


def cgroup_names(pid: int | str, proc: Path = Path("/proc")) -> list[str]:
    """The cgroup paths of a process (one per hierarchy), empty if it is gone."""
    try:
        text = (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return []
    return [line.split(":", 2)[2] for line in text.splitlines() if line.count(":") >= 2]


def in_container(paths: list[str], container_id: str) -> bool:
    """Does one of the cgroup ``paths`` belong to ``container_id``? The id must be a whole
    component, or one after a runtime prefix (``cri-containerd-<id>.scope``)."""
    pattern = re.compile(rf"(?:^|[/-]){re.escape(container_id)}(?:\.scope)?(?:/|$)")
    return any(pattern.search(path) for path in paths)


def container_processes(container_id: str, proc: Path = Path("/proc")) -> list[int]:
    """The pids whose cgroup names ``container_id``, oldest first."""
    found: list[tuple[int, int]] = []
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        if in_container(cgroup_names(entry.name, proc), container_id):
            started = process_start(int(entry.name))
            if started is not None:
                found.append((started, int(entry.name)))
    return [pid for _, pid in sorted(found)]


@dataclass(frozen=True)
class ContainerTarget:
    """``container/<id>``: the process of a container on this node (the agent's view)."""

    container_id: str

    @classmethod
    def parse(cls, text: str) -> ContainerTarget:
        kind, _, rest = text.strip().partition("/")
        container_id = rest.split("://", 1)[-1]  # a containerd:// prefix is fine too
        if kind != "container" or not _ID.fullmatch(container_id):
            raise TargetError(f"invalid container target {text!r}: expected container/<hex id>")
        return cls(container_id)

    def process(self) -> int:
        pids = container_processes(self.container_id)
        if not pids:
            raise TargetError(
                f"no process of container {self.container_id[:12]} on this node "
                "(is the agent in the host's PID namespace?)"
            )
        return pids[0]

    def enter(self) -> None:
        namespaces.enter_pid(self.process())
