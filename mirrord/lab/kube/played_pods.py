"""What the played runtime (``runtime.Runtime``) knows of the pods it plays, and what it
tells the API server about them: a ``Claim`` (pods run by processes that exist already),
the records of a played pod and its containers (``PlayedPod``, ``PlayedContainer``), the
pod status document a kubelet would write from them (``write_status``), and the cgroup
each container's processes live in (``kubepods/pod<uid>/cri-containerd-<id>``, so that
the agent's ``/proc/*/cgroup`` lookup finds them as on a node).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from mirrord.lab.kube import resources


def cgroup_root() -> Path:
    """The cgroup v2 hierarchy: ``/sys/fs/cgroup/unified`` on hybrid hosts (this one)."""
    unified = Path("/sys/fs/cgroup/unified")
    return unified if (unified / "cgroup.procs").exists() else Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Claim:
    """Pods with these labels in ``namespace`` are run by processes that exist already."""

    namespace: str
    labels: Mapping[str, str]
    netns: str  # the pod's network namespace (an ``ip netns`` name)
    processes: Mapping[str, Sequence[int]]  # container name -> its pids
    ports: Mapping[int, resources.ForwardTarget] = field(default_factory=dict)

    def matches(self, pod: Any) -> bool:
        labels = pod.metadata.labels or {}
        return pod.metadata.namespace == self.namespace and all(
            labels.get(k) == v for k, v in self.labels.items()
        )

    @classmethod
    def of_lab(
        cls, namespace: str, labels: Mapping[str, str], lab: Any, container: str = "main"
    ) -> Claim:
        """The lab's staging service as the pod's ``container`` (``mirrord.lab.Lab``)."""
        return cls(
            namespace,
            dict(labels),
            lab.staging_ns,
            {container: [lab.service_pid]},
            {lab.service_port: (lab.staging_addr, lab.service_port)},
        )


@dataclass(eq=False)
class PlayedContainer:
    name: str
    id: str
    ephemeral: bool = False
    proc: subprocess.Popen[bytes] | None = None
    cgroup: Path | None = None
    state: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    image: str = resources.DEFAULT_IMAGE
    podman: str | None = None  # the podman container that runs it


@dataclass(eq=False)
class PlayedPod:
    uid: str
    name: str
    namespace: str
    netns: str
    own_netns: bool
    host_pid: bool = False
    claim: Claim | None = None
    containers: dict[str, PlayedContainer] = field(default_factory=dict)
    forwards: dict[int, resources.ForwardTarget] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    moved: dict[int, str] = field(default_factory=dict)  # claimed pid -> its old cgroup
    gone: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)


# ---- status


def write_status(api: client.ApiClient, played: PlayedPod) -> None:
    """The pod's status from its containers' states, as a kubelet would write it."""
    with played.lock:
        regular = [c for c in played.containers.values() if not c.ephemeral]
        ephemeral = [c for c in played.containers.values() if c.ephemeral]
        if regular and all("terminated" in c.state for c in regular):
            ok = all(c.state["terminated"]["exitCode"] == 0 for c in regular)
            phase = "Succeeded" if ok else "Failed"
        elif any("running" in c.state for c in regular):
            phase = "Running"
        else:
            phase = "Pending"
        ready = bool(regular) and all(c.ready for c in regular)
        t = resources.now()
        conditions = [
            {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": t}
            for kind, ok in (
                ("PodScheduled", True),
                ("Initialized", True),
                ("ContainersReady", ready),
                ("Ready", ready),
            )
        ]
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": [container_status(c) for c in regular],
            "hostIP": resources.NODE_IP,
            "hostIPs": [{"ip": resources.NODE_IP}],
            "startTime": t,
        }
        if ephemeral:
            status["ephemeralContainerStatuses"] = [container_status(c) for c in ephemeral]
        resources.set_pod_status(api, played.name, played.namespace, status)


def container_status(c: PlayedContainer) -> dict[str, Any]:
    return {
        "name": c.name,
        "image": c.image,
        "imageID": f"{c.image}@sha256:{'0' * 64}",
        "containerID": f"containerd://{c.id}",
        "ready": c.ready,
        "started": "running" in c.state,
        "restartCount": 0,
        "state": c.state or {"waiting": {"reason": "ContainerCreating"}},
    }


# ---- cgroups


def pod_cgroup(played: PlayedPod) -> Path:
    return cgroup_root() / "kubepods" / f"pod{played.uid}"


def container_cgroup(played: PlayedPod, c: PlayedContainer) -> Path:
    """The container's cgroup, made if it is not there yet."""
    path = pod_cgroup(played) / f"cri-containerd-{c.id}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def current_cgroup(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return "/"


def remove_cgroup(path: Path) -> None:
    for _ in range(20):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)  # its last process is still exiting
