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
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from mirrord.kube.objects import model
from mirrord.lab.kube import resources
from mirrord.lab.kube.stages import PLAYED_NODE_PREFIX

log = logging.getLogger("mirrord.lab.kube.runtime")
NETNS_PREFIX = "mrdk"
KILL_GRACE = 3.0
SOCAT_BUFFER = 256 * 1024


def cgroup_root() -> Path:
    """The cgroup v2 hierarchy: ``/sys/fs/cgroup/unified`` on hybrid hosts (this one)."""
    unified = Path("/sys/fs/cgroup/unified")
    return unified if (unified / "cgroup.procs").exists() else Path("/sys/fs/cgroup")


def now_nano() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def forward_command(netns: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """What a kubelet does for a port-forward: connect to the port inside the pod."""
    socat = shutil.which("socat") or "socat"
    return [
        shutil.which("nsenter") or "nsenter",
        f"--net=/run/netns/{netns}",
        socat,
        f"-b{SOCAT_BUFFER}",
        "STDIO",
        # nodelay: the kubelet's and the runtime's Go sockets have Nagle off by default
        f"TCP:{host}:{port},nodelay",
    ]


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
class _Container:
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
class _Pod:
    uid: str
    name: str
    namespace: str
    netns: str
    own_netns: bool
    host_pid: bool = False
    claim: Claim | None = None
    containers: dict[str, _Container] = field(default_factory=dict)
    forwards: dict[int, resources.ForwardTarget] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    moved: dict[int, str] = field(default_factory=dict)  # claimed pid -> its old cgroup
    gone: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)


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
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.claims: list[Claim] = []
        self.pods: dict[str, _Pod] = {}
        self.errors: list[str] = []
        #: images run from a real image with podman (spec image -> local podman image);
        #: other containers' commands run as processes of this host
        self.images = dict(images or {})
        #: where a pod that is not claimed runs: a network namespace name, or None for
        #: one of its own (tests may put agents of targetless sessions into the lab)
        self.network_for: Callable[[Any], str | None] = lambda pod: None
        # what the "image" sets: the harness's own interpreter and import path
        base = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        if os.environ.get("PYTHONPATH"):
            base["PYTHONPATH"] = os.environ["PYTHONPATH"]
        self.image_env = {**base, **(env or {})}
        self._netns_count = 0
        self._stop = threading.Event()
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
                    self._start_container(known, pod, spec, ephemeral=False)
        for spec in pod.spec.ephemeral_containers or []:
            if spec.name not in known.containers:
                self._start_container(known, pod, spec, ephemeral=True)

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

    def _new_pod(self, pod: Any, claim: Claim | None) -> _Pod:
        if claim is not None:
            netns, own = claim.netns, False
        else:
            chosen = self.network_for(pod)
            netns, own = (chosen, False) if chosen else (self._make_netns(), True)
        played = _Pod(
            pod.metadata.uid, pod.metadata.name, pod.metadata.namespace, netns, own, claim=claim
        )
        played.host_pid = bool(pod.spec.host_pid)
        self.pods[played.uid] = played
        return played

    # ---- claimed pods: processes that run already

    def _run_claimed(self, played: _Pod, pod: Any, claim: Claim) -> None:
        with played.lock:
            for spec in pod.spec.containers:
                c = _Container(spec.name, resources.new_container_id(), image=spec.image)
                c.state = {"running": {"startedAt": resources.now()}}
                c.ready = True
                c.cgroup = self._cgroup(played, c)
                for pid in claim.processes.get(spec.name, ()):
                    played.moved[pid] = _current_cgroup(pid)
                    (c.cgroup / "cgroup.procs").write_text(str(pid))
                played.containers[spec.name] = c
            played.forwards.update(claim.ports)
            if played.forwards:
                resources.set_port_forward(self.api, played.name, played.namespace, played.forwards)
            self._write_status(played)

    # ---- containers run as processes

    def _start_container(self, played: _Pod, pod: Any, spec: Any, ephemeral: bool) -> None:
        c = _Container(spec.name, resources.new_container_id(), ephemeral, image=spec.image)
        c.state = {"waiting": {"reason": "ContainerCreating"}}
        with played.lock:
            played.containers[spec.name] = c
        if not [*(spec.command or []), *(spec.args or [])]:
            c.state = {"waiting": {"reason": "RunContainerError", "message": "no command"}}
            self._write_status(played)
        elif not self._launch(played, c, spec):
            # its Secret is not there yet: a kubelet retries; so do we
            threading.Thread(target=self._retry, args=(played, c, spec), daemon=True).start()

    def _retry(self, played: _Pod, c: _Container, spec: Any) -> None:
        deadline = time.monotonic() + 60
        while not played.gone and not self._stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
            if self._launch(played, c, spec):
                return

    def _launch(self, played: _Pod, c: _Container, spec: Any) -> bool:
        env = self._container_env(played.namespace, spec)
        if env is None:
            return False
        log_path = self.workdir / f"{played.namespace}_{played.name}_{spec.name}.log"
        log_path.touch()
        with played.lock:
            played.logs[spec.name] = str(log_path)
            resources.set_logs(self.api, played.name, played.namespace, played.logs)
        image = self.images.get(spec.image or "")
        if image is not None:
            argv, env = self._podman_run(played, c, spec, image, env)
        else:
            # `ip netns exec` execs the command: the pid is the command's own
            ip = shutil.which("ip") or "ip"
            argv = [ip, "netns", "exec", played.netns, *(spec.command or []), *(spec.args or [])]
        log.info("%s/%s: running %s", played.namespace, played.name, " ".join(argv))
        c.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if image is not None:
            c.podman = _podman_name(played, c)
        c.cgroup = self._cgroup(played, c)
        with contextlib.suppress(OSError):  # it may be gone already
            (c.cgroup / "cgroup.procs").write_text(str(c.proc.pid))
        c.state = {"running": {"startedAt": resources.now()}}
        c.ready = True
        self._write_status(played)
        threading.Thread(
            target=self._pump, args=(played, c, log_path), name=f"log-{spec.name}", daemon=True
        ).start()
        return True

    def _podman_run(
        self, played: _Pod, c: _Container, spec: Any, image: str, env: dict[str, str]
    ) -> tuple[list[str], dict[str, str]]:
        """The container from its image, as containerd would run the pod spec: its network
        namespace, the host's PID namespace only with hostPID, containerd's default
        capabilities (podman's lack NET_RAW, MKNOD, AUDIT_WRITE) plus the spec's add/drop,
        privileged only if asked, no seccomp filter (the kubelet's default: Unconfined)."""
        from mirrord.lab.kube.agent_image import podman, ulimit_args

        security = spec.security_context
        caps = security.capabilities if security is not None else None
        argv = [*podman(), "run", "--rm", "--name", _podman_name(played, c)]
        argv += [f"--network=ns:/run/netns/{played.netns}", *ulimit_args()]
        argv += ["--security-opt", "seccomp=unconfined", "--cgroupns=host"]
        if played.host_pid:
            argv.append("--pid=host")
        if security is not None and security.privileged:
            argv.append("--privileged")
        for cap in ("NET_RAW", "MKNOD", "AUDIT_WRITE", *((caps and caps.add) or [])):
            argv += ["--cap-add", cap]
        for cap in (caps and caps.drop) or []:
            argv += ["--cap-drop", cap]
        if security is not None and security.run_as_user is not None:
            argv += ["--user", str(security.run_as_user)]
        # values come from podman's environment: no token on a command line
        for name in env.keys() - self.image_env.keys():
            argv += ["--env", name]
        if spec.command:
            argv += ["--entrypoint", json.dumps(list(spec.command))]
        return [*argv, image, *(spec.args or [])], {**os.environ, **env}

    def _container_env(self, namespace: str, spec: Any) -> dict[str, str] | None:
        env = dict(self.image_env)
        for var in spec.env or []:
            if var.value_from is None:
                env[var.name] = var.value or ""
                continue
            ref = var.value_from.secret_key_ref
            if ref is None:
                continue
            try:
                secret = self.core.read_namespaced_secret(ref.name, namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            env[var.name] = base64.b64decode((secret.data or {})[ref.key]).decode()
        return env

    def _pump(self, played: _Pod, c: _Container, log_path: Path) -> None:
        """The container's output into its CRI log; its ready line opens its port."""
        assert c.proc is not None and c.proc.stdout is not None
        with log_path.open("ab", buffering=0) as out:
            for raw in iter(c.proc.stdout.readline, b""):
                line = raw.rstrip(b"\n")
                port = _ready_port(line)
                if port is not None:
                    with played.lock:
                        played.forwards[port] = forward_command(played.netns, port)
                        resources.set_port_forward(
                            self.api, played.name, played.namespace, played.forwards
                        )
                out.write(f"{now_nano()} stdout F ".encode() + line + b"\n")
        code = c.proc.wait()
        c.state = {
            "terminated": {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": c.state.get("running", {}).get("startedAt", resources.now()),
                "finishedAt": resources.now(),
            }
        }
        c.ready = False
        if not played.gone:
            with contextlib.suppress(ApiException):  # the pod may be gone meanwhile
                self._write_status(played)

    # ---- status

    def _write_status(self, played: _Pod) -> None:
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
                "containerStatuses": [_status(c) for c in regular],
                "hostIP": resources.NODE_IP,
                "hostIPs": [{"ip": resources.NODE_IP}],
                "startTime": t,
            }
            if ephemeral:
                status["ephemeralContainerStatuses"] = [_status(c) for c in ephemeral]
            resources.set_pod_status(self.api, played.name, played.namespace, status)

    # ---- namespaces, cgroups, the end

    def _make_netns(self) -> str:
        with self._lock:
            self._netns_count += 1
            name = f"{NETNS_PREFIX}{os.getpid()}x{self._netns_count}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    def _cgroup(self, played: _Pod, c: _Container) -> Path:
        path = cgroup_root() / "kubepods" / f"pod{played.uid}" / f"cri-containerd-{c.id}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _stop_pod(self, played: _Pod) -> None:
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
                _rmdir(c.cgroup)
        _rmdir(cgroup_root() / "kubepods" / f"pod{played.uid}")
        if played.own_netns:
            subprocess.run(["ip", "netns", "delete", played.netns], check=False)
        with self._lock:
            self.pods.pop(played.uid, None)


def _podman_name(played: _Pod, c: _Container) -> str:
    return f"{played.name}-{c.name}-{c.id[:8]}"


def _status(c: _Container) -> dict[str, Any]:
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


def _ready_port(line: bytes) -> int | None:
    """The port of a mirrord ready line (``{"ready": true, "address": "HOST:PORT"}``)."""
    if not line.startswith(b"{"):
        return None
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("ready") is not True:
        return None
    _, _, port = str(doc.get("address", "")).rpartition(":")
    return int(port) if port.isdigit() else None


def _current_cgroup(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return "/"


def _rmdir(path: Path) -> None:
    for _ in range(20):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)  # its last process is still exiting


def remove_stale_netns() -> list[str]:
    """Network namespaces of runtimes whose process is gone (a killed test run)."""
    removed = []
    for entry in Path("/run/netns").glob(f"{NETNS_PREFIX}*x*"):
        owner = entry.name[len(NETNS_PREFIX) :].split("x", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            subprocess.run(["ip", "netns", "delete", entry.name], check=False)
            removed.append(entry.name)
    return removed
