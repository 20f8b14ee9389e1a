"""The container runtime of the played nodes, played by the harness (what a kubelet and
containerd would do there, with processes and namespaces of this host).

- A *claimed* pod (``claim``: a namespace, labels, and what runs it) is a target: its
  containers are processes that already run in a lab network namespace (the staging
  service). Each container gets a new id; its processes move into the cgroup
  ``kubepods/pod<uid>/cri-containerd-<id>``, so that the agent's ``/proc/*/cgroup``
  lookup finds them as on a node, and the pod status says ``containerd://<id>``.
- Any other pod on a played node (the agent's Job pod) has its containers' command run
  as processes, in a network namespace of its own (``ip netns``), with the environment
  its spec gives (``secretKeyRef`` read from the Secret, as a kubelet does), stdout and
  stderr in a CRI log file that kwok serves as the pod's log. A container that prints a
  mirrord ready line (``{"ready": true, "address": "127.0.0.1:PORT"}``) gets that port
  forwarded into its namespace (``nsenter`` + ``socat``) before the line reaches the log.
  When the process exits, the pod's status says so (Succeeded/Failed), so Jobs finish.
- Ephemeral containers added to a claimed pod run the same way, in that pod's network
  namespace, and their status goes to ``ephemeralContainerStatuses``.
- Pods nobody scheduled (no ``nodeName``) are bound to a played node: no scheduler runs.

Deleting a pod kills its processes. ``close()`` ends everything and puts claimed
processes back in the cgroups they came from.

This module is the watch, schedule and stop loop and owns the network namespaces;
``container_runner`` runs one container, ``played_pods`` holds the records of played
pods, their status documents and cgroups.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from mirrord.kube.objects import model
from mirrord.lab.kube import resources
from mirrord.lab.kube.container_runner import ContainerRunner
from mirrord.lab.kube.played_pods import (
    Claim,
    PlayedContainer,
    PlayedPod,
    cgroup_root,
    container_cgroup,
    current_cgroup,
    pod_cgroup,
    remove_cgroup,
    write_status,
)
from mirrord.lab.kube.stages import PLAYED_NODE_PREFIX

log = logging.getLogger("mirrord.lab.kube.runtime")
NETNS_PREFIX = "mrdk"
KILL_GRACE = 3.0


class Runtime:
    """Plays the played nodes' runtime while it runs (see the module's docstring)."""

    def __init__(
        self,
        kube: Any,
        workdir: Path,
        env: Mapping[str, str] | None = None,
        images: Mapping[str, str] | None = None,
    ) -> None:
        self.kube = kube
        self.api: client.ApiClient = kube.api_client()
        self.core = client.CoreV1Api(self.api)
        workdir.mkdir(parents=True, exist_ok=True)
        self.claims: list[Claim] = []
        self.pods: dict[str, PlayedPod] = {}
        self.errors: list[str] = []
        #: where a pod that is not claimed runs: a network namespace name, or None for
        #: one of its own (tests may put agents of targetless sessions into the lab)
        self.network_for: Callable[[Any], str | None] = lambda pod: None
        # what the "image" sets: the harness's own interpreter and import path
        base = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        if os.environ.get("PYTHONPATH"):
            base["PYTHONPATH"] = os.environ["PYTHONPATH"]
        self._netns_count = 0
        self._stop = threading.Event()
        # ``images``: spec image -> local podman image, run with podman; other containers'
        # commands run as processes of this host
        self._runner = ContainerRunner(
            self.api, workdir, {**base, **(env or {})}, images or {}, self._stop
        )
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        remove_stale_netns()

    # ---- lifecycle

    def start(self) -> Runtime:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, args=(ready,), name="played-runtime", daemon=True
        )
        self._thread.start()
        ready.wait(10)
        return self

    def claim(self, claim: Claim) -> Claim:
        """Pods matching ``claim`` (now or later) are run by its processes."""
        with self._lock:
            self.claims.append(claim)
        # pods that exist already
        for pod in self.core.list_namespaced_pod(claim.namespace).items:
            if claim.matches(pod):
                self._on_pod("ADDED", pod)
        return claim

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        with self._lock:
            pods = list(self.pods.values())
        for pod in pods:
            self._stop_pod(pod)

    def __enter__(self) -> Runtime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self) -> None:
        """Raise what went wrong in the harness's threads (a test should see it)."""
        if self.errors:
            raise AssertionError("played runtime: " + "; ".join(self.errors))

    # ---- watching pods

    def _watch(self, ready: threading.Event) -> None:
        version: str | None = None
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                if version is None:
                    pods = self.core.list_pod_for_all_namespaces()
                    for pod in pods.items:
                        self._on_pod("ADDED", pod)
                    version = pods.metadata.resource_version  # type: ignore[union-attr]
                    ready.set()
                # short watches: close() need not wait long for the current one
                for event in w.stream(
                    self.core.list_pod_for_all_namespaces,
                    resource_version=version,
                    timeout_seconds=1,
                    _request_timeout=10,
                ):
                    self._on_pod(event["type"], event["object"])
                    if self._stop.is_set():
                        break
                version = w.resource_version or version
            except Exception as exc:  # noqa: BLE001 - the harness must keep running
                if not self._stop.is_set():
                    log.warning("pod watch: %r", exc)
                    version = None  # e.g. 410 Gone: list again
                    time.sleep(0.1)
            finally:
                w.stop()

    def _on_pod(self, kind: str, pod: Any) -> None:
        try:
            self._handle(kind, pod)
        except Exception as exc:  # noqa: BLE001
            message = f"{pod.metadata.namespace}/{pod.metadata.name}: {exc!r}"
            log.exception("played runtime: %s", message)
            self.errors.append(message)

    def _handle(self, kind: str, pod: Any) -> None:
        uid = pod.metadata.uid
        with self._lock:
            known = self.pods.get(uid)
        if kind == "DELETED" or pod.metadata.deletion_timestamp is not None:
            if known is not None:
                self._stop_pod(known)
            return
        node = pod.spec.node_name or ""
        if not node:
            self._schedule(pod)
            return
        if not node.startswith(PLAYED_NODE_PREFIX):
            return
        if known is None and _finished(pod):
            return  # run to its end by an earlier runtime (a test before): a kubelet would not rerun it
        if known is None:
            with self._lock:
                if uid in self.pods:
                    return
                claim = next((c for c in self.claims if c.matches(pod)), None)
                known = self._new_pod(pod, claim)
            if claim is not None:
                self._run_claimed(known, pod, claim)
            else:
                for spec in pod.spec.containers:
                    self._runner.start(known, spec, ephemeral=False)
        for spec in pod.spec.ephemeral_containers or []:
            if spec.name not in known.containers:
                self._runner.start(known, spec, ephemeral=True)

    def _schedule(self, pod: Any) -> None:
        """What kube-scheduler would do here: bind the pod to a played node it fits."""
        wanted = pod.spec.node_selector or {}
        nodes: list[Any] = client.CoreV1Api(self.api).list_node().items
        for node in nodes:
            labels = node.metadata.labels or {}
            if node.metadata.name.startswith(PLAYED_NODE_PREFIX) and all(
                labels.get(k) == v for k, v in wanted.items()
            ):
                body = {
                    "apiVersion": "v1",
                    "kind": "Binding",
                    "metadata": {"name": pod.metadata.name},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": node.metadata.name},
                }
                with contextlib.suppress(ApiException):  # bound meanwhile
                    # the server answers with a Status, not the Binding the client expects
                    self.core.create_namespaced_pod_binding(
                        pod.metadata.name,
                        pod.metadata.namespace,
                        model(client.V1Binding, body),
                        _preload_content=False,
                    )
                return

    def _new_pod(self, pod: Any, claim: Claim | None) -> PlayedPod:
        if claim is not None:
            netns, own = claim.netns, False
        else:
            chosen = self.network_for(pod)
            netns, own = (chosen, False) if chosen else (self._make_netns(), True)
        played = PlayedPod(
            pod.metadata.uid, pod.metadata.name, pod.metadata.namespace, netns, own, claim=claim
        )
        played.host_pid = bool(pod.spec.host_pid)
        self.pods[played.uid] = played
        return played

    # ---- claimed pods: processes that run already

    def _run_claimed(self, played: PlayedPod, pod: Any, claim: Claim) -> None:
        with played.lock:
            for spec in pod.spec.containers:
                c = PlayedContainer(spec.name, resources.new_container_id(), image=spec.image)
                c.state = {"running": {"startedAt": resources.now()}}
                c.ready = True
                c.cgroup = container_cgroup(played, c)
                for pid in claim.processes.get(spec.name, ()):
                    played.moved[pid] = current_cgroup(pid)
                    (c.cgroup / "cgroup.procs").write_text(str(pid))
                played.containers[spec.name] = c
            played.forwards.update(claim.ports)
            if played.forwards:
                resources.set_port_forward(self.api, played.name, played.namespace, played.forwards)
            write_status(self.api, played)

    # ---- namespaces, cgroups, the end

    def _make_netns(self) -> str:
        with self._lock:
            self._netns_count += 1
            name = f"{NETNS_PREFIX}{os.getpid()}x{self._netns_count}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    def _stop_pod(self, played: PlayedPod) -> None:
        with played.lock:
            if played.gone:
                return
            played.gone = True
        procs = [c.proc for c in played.containers.values() if c.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for c in played.containers.values():
            if c.podman is not None:  # what --rm did not get to (a killed podman)
                from mirrord.lab.kube.agent_image import podman

                subprocess.run([*podman(), "rm", "-f", c.podman], capture_output=True)
        for pid, old in played.moved.items():
            with contextlib.suppress(OSError):  # gone already: nothing to move back
                (cgroup_root() / old.lstrip("/") / "cgroup.procs").write_text(str(pid))
        for c in played.containers.values():
            if c.cgroup is not None:
                remove_cgroup(c.cgroup)
        remove_cgroup(pod_cgroup(played))
        if played.own_netns:
            subprocess.run(["ip", "netns", "delete", played.netns], check=False)
        with self._lock:
            self.pods.pop(played.uid, None)


def remove_stale_netns() -> list[str]:
    """Network namespaces of runtimes whose process is gone (a killed test run)."""
    removed = []
    for entry in Path("/run/netns").glob(f"{NETNS_PREFIX}*x*"):
        owner = entry.name[len(NETNS_PREFIX) :].split("x", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            subprocess.run(["ip", "netns", "delete", entry.name], check=False)
            removed.append(entry.name)
    return removed


def _finished(pod: Any) -> bool:
    """Whether the pod's containers ran and ended (its status says so)."""
    status = pod.status
    if status is None:
        return False
    if status.phase in ("Succeeded", "Failed"):
        return True
    statuses = status.container_statuses or []
    return bool(statuses) and all(
        c.state is not None and c.state.terminated is not None for c in statuses
    )
