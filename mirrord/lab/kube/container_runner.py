"""Running one container of a pod the played runtime (``runtime.Runtime``) plays, as a
kubelet and containerd would: its command as a process of this host in the pod's network
namespace (``ip netns exec``), or its image with ``podman run`` when the runtime was given
a local image for it; the environment its spec gives (``secretKeyRef`` read from the
Secret, retried until the Secret exists); its stdout and stderr in a CRI log file that
kwok serves as the pod's log; and, when it prints a mirrord ready line, a forward to that
port inside its namespace (``nsenter`` + ``socat``) before the line reaches the log. When
the process exits, its state says so, and so does the pod's status.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mirrord.lab.kube import resources
from mirrord.lab.kube.played_pods import (
    PlayedContainer,
    PlayedPod,
    container_cgroup,
    write_status,
)

log = logging.getLogger("mirrord.lab.kube.runtime")  # one log for the played runtime
SOCAT_BUFFER = 256 * 1024


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


class ContainerRunner:
    """Starts the containers of played pods that are not claimed, and ephemeral
    containers (see the module's docstring); ``stop`` is the runtime's: once set, nothing
    retries any more."""

    def __init__(
        self,
        api: client.ApiClient,
        workdir: Path,
        image_env: Mapping[str, str],
        images: Mapping[str, str],
        stop: threading.Event,
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.workdir = workdir
        #: what the "image" sets for commands run as processes of this host
        self.image_env = dict(image_env)
        #: images run from a real image with podman (spec image -> local podman image)
        self.images = dict(images)
        self._stop = stop

    def start(self, played: PlayedPod, spec: Any, ephemeral: bool) -> None:
        c = PlayedContainer(spec.name, resources.new_container_id(), ephemeral, image=spec.image)
        c.state = {"waiting": {"reason": "ContainerCreating"}}
        with played.lock:
            played.containers[spec.name] = c
        if not [*(spec.command or []), *(spec.args or [])]:
            c.state = {"waiting": {"reason": "RunContainerError", "message": "no command"}}
            write_status(self.api, played)
        elif not self._launch(played, c, spec):
            # its Secret is not there yet: a kubelet retries; so do we
            threading.Thread(target=self._retry, args=(played, c, spec), daemon=True).start()

    def _retry(self, played: PlayedPod, c: PlayedContainer, spec: Any) -> None:
        deadline = time.monotonic() + 60
        while not played.gone and not self._stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
            if self._launch(played, c, spec):
                return

    def _launch(self, played: PlayedPod, c: PlayedContainer, spec: Any) -> bool:
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
            c.podman = podman_name(played, c)
        c.cgroup = container_cgroup(played, c)
        with contextlib.suppress(OSError):  # it may be gone already
            (c.cgroup / "cgroup.procs").write_text(str(c.proc.pid))
        c.state = {"running": {"startedAt": resources.now()}}
        c.ready = True
        write_status(self.api, played)
        threading.Thread(
            target=self._pump, args=(played, c, log_path), name=f"log-{spec.name}", daemon=True
        ).start()
        return True

    def _podman_run(
        self, played: PlayedPod, c: PlayedContainer, spec: Any, image: str, env: dict[str, str]
    ) -> tuple[list[str], dict[str, str]]:
        """The container from its image, as containerd would run the pod spec: its network
        namespace, the host's PID namespace only with hostPID, containerd's default
        capabilities (podman's lack NET_RAW, MKNOD, AUDIT_WRITE) plus the spec's add/drop,
        privileged only if asked, no seccomp filter (the kubelet's default: Unconfined)."""
        from mirrord.lab.kube.agent_image import podman, ulimit_args

        security = spec.security_context
        caps = security.capabilities if security is not None else None
        argv = [*podman(), "run", "--rm", "--name", podman_name(played, c)]
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

    def _pump(self, played: PlayedPod, c: PlayedContainer, log_path: Path) -> None:
        """The container's output into its CRI log; its ready line opens its port."""
        assert c.proc is not None and c.proc.stdout is not None
        with log_path.open("ab", buffering=0) as out:
            for raw in iter(c.proc.stdout.readline, b""):
                line = raw.rstrip(b"\n")
                port = ready_port(line)
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
                write_status(self.api, played)


def podman_name(played: PlayedPod, c: PlayedContainer) -> str:
    return f"{played.name}-{c.name}-{c.id[:8]}"


def ready_port(line: bytes) -> int | None:
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
