"""Starting a session: the agent, the intproxy, and the environment the app runs with."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mirrord.client.proxy import ProxyClient, ProxyUnavailable
from mirrord.config import MirrordConfig
from mirrord.errors import MirrordError, NotRoot, TargetNotFound
from mirrord.kube.client import PENDING_AGENT
from mirrord.launch.hook import LAYER_PATH_ENV, layer_path
from mirrord.launch.kube_agent import KubeAgentHandle, access_of, kube_agent_for, uses_cluster
from mirrord.launch.local_agent import agent_for
from mirrord.launch.processes import spawn, wait_ready
from mirrord.launch.progress import NoProgress, Progress
from mirrord.protocol import Env, GetEnv, RequestFailed
from mirrord.settings.contract import SETTINGS_ENV, SOCKET_ENV, TOKEN_ENV
from mirrord.targets.local import LocalTarget, TargetError
from mirrord.targets.path import LOCAL_KINDS, parse_kube_target, target_kind

START_TIMEOUT = 30.0


@dataclass
class RunningSession:
    """A running agent + intproxy, and what the app needs to use them."""

    target: str
    workdir: Path
    proxy_socket: str
    proxy_token: str
    proxy_pid: int
    layer_settings: dict = field(default_factory=dict)

    def client(self) -> ProxyClient:
        return ProxyClient(self.proxy_socket, self.proxy_token, name="cli")

    def remote_env(self) -> dict[str, str]:
        try:
            reply = self.client().request(GetEnv(req=0))
        except ProxyUnavailable as exc:
            raise MirrordError(f"cannot read the target's environment: {exc}") from None
        if isinstance(reply, RequestFailed):
            raise MirrordError(f"cannot read the target's environment: {reply.message}")
        assert isinstance(reply, Env)
        return reply.env

    def layer_env(self) -> dict[str, str]:
        """Variables that load the layer into a Python program and point it at us."""
        return {
            SOCKET_ENV: self.proxy_socket,
            TOKEN_ENV: self.proxy_token,
            SETTINGS_ENV: json.dumps(self.layer_settings),
            LAYER_PATH_ENV: layer_path(),
        }


def check_target(target: str) -> LocalTarget:
    try:
        parsed = LocalTarget.parse(target)
    except TargetError as exc:
        raise TargetNotFound(str(exc)) from None
    if parsed.kind != "targetless" and os.geteuid() != 0:
        raise NotRoot(f"target {target} needs root to enter its namespaces: run with sudo")
    return parsed


class _Agent(Protocol):
    @property
    def address(self) -> str: ...

    @property
    def token(self) -> str: ...

    @property
    def started(self) -> bool: ...

    @property
    def proxy_args(self) -> Sequence[str]: ...

    def failure_hint(self) -> str: ...


def start_session(
    target: str,
    layer_settings: dict,
    *,
    config: MirrordConfig | None = None,
    progress: Progress | None = None,
    watch_pid: int | None = None,
    log_level: str = "info",
    no_layer_warning: str | None = None,
) -> RunningSession:
    """Start (or join) the target's agent and start an intproxy; the intproxy ends when
    `watch_pid` (default: us, who become the app) ends. With `no_layer_warning`, the
    intproxy prints that line on our stderr if no layer has connected a few seconds on.
    A Kubernetes target (or targetless with a namespace) gets its agent in the cluster
    that `config` names, with `progress` shown meanwhile."""
    cfg = config or MirrordConfig()
    in_cluster = uses_cluster(cfg, target)
    if in_cluster:
        try:
            parse_kube_target(target)
        except TargetError as exc:
            raise TargetNotFound(str(exc)) from None
        progress = progress or Progress()
    else:
        if target_kind(target) not in (*LOCAL_KINDS, "targetless"):
            try:
                parse_kube_target(target)  # says which kinds there are
            except TargetError as exc:
                raise TargetNotFound(str(exc)) from None
        check_target(target)
        progress = progress or NoProgress()
    # (MIRRORD_NATIVE_PUMP=0 keeps a local agent's and the intproxy's links in Python)
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MIRRORD_") or k == "MIRRORD_NATIVE_PUMP"
    }

    def find_agent(fresh: bool) -> _Agent:
        if in_cluster:
            return kube_agent_for(cfg, target, progress, fresh=fresh)
        return agent_for(target, log_level=log_level, env=base_env)

    workdir = Path(tempfile.mkdtemp(prefix="mirrord-"))
    proxy_token = secrets.token_hex(16)
    # the intproxy's one line for the user goes to our stderr (its own is its log)
    warn_fd = os.dup(2) if no_layer_warning else None
    try:
        proxy, agent = _start_intproxy(
            find_agent,
            base_env,
            progress,
            workdir,
            proxy_token,
            watch_pid,
            log_level,
            warn_fd,
            no_layer_warning,
            pending_args=access_of(cfg).args() if in_cluster else None,
        )
    except BaseException:
        progress.fail()
        raise
    finally:
        if warn_fd is not None:
            os.close(warn_fd)
    if isinstance(agent, KubeAgentHandle):
        progress.done(f"connected to {agent.target.describe()}")
    return RunningSession(
        target=target,
        workdir=workdir,
        proxy_socket=str(workdir / "proxy.sock"),
        proxy_token=proxy_token,
        proxy_pid=proxy.pid,
        layer_settings=layer_settings,
    )


def _start_intproxy(
    find_agent: Callable[[bool], _Agent],
    base_env: dict[str, str],
    progress: Progress,
    workdir: Path,
    proxy_token: str,
    watch_pid: int | None,
    log_level: str,
    warn_fd: int | None,
    no_layer_warning: str | None,
    pending_args: Sequence[str] | None = None,
) -> tuple[subprocess.Popen[bytes], _Agent]:
    """Start the intproxy for the agent `find_agent` gives. With `pending_args` (a
    cluster agent), the intproxy starts first and gets the agent's address on its stdin
    once the agent is ready: its imports and kubeconfig overlap with making the agent."""
    log = workdir / "intproxy.log"

    def argv(address: str, extra: Sequence[str]) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mirrord.proxy",
            "--agent",
            address,
            *extra,
            "--socket",
            str(workdir / "proxy.sock"),
            "--watch-pid",
            str(watch_pid or os.getpid()),
            "--workdir",
            str(workdir),
            "--log-level",
            log_level,
            *(["--no-fd-passing"] if os.environ.get("MIRRORD_NO_FD_PASSING") else []),
            *(
                ["--warn-fd", str(warn_fd), "--no-layer-warning", no_layer_warning]
                if warn_fd is not None and no_layer_warning
                else []
            ),
        ]

    fds = (warn_fd,) if warn_fd is not None else ()
    env = {**base_env, "MIRRORD_PROXY_TOKEN": proxy_token}
    # a found agent may be leaving (idle) just as we join it: then start a fresh one
    for attempt in range(2):
        early = None
        if pending_args is not None:
            early = spawn(argv(PENDING_AGENT, pending_args), env, log, fds, stdin_pipe=True)
        try:
            agent = find_agent(attempt > 0)
        except BaseException:
            if early is not None:
                early.kill()
                early.wait()
            raise
        progress.step("port-forward to the agent")
        try:
            if early is not None:
                proxy = early
                _tell_agent(proxy, agent)
            else:
                proxy = spawn(
                    argv(agent.address, agent.proxy_args),
                    {**env, "MIRRORD_AGENT_TOKEN": agent.token},
                    log,
                    fds,
                )
            wait_ready("intproxy", proxy, log, START_TIMEOUT)
            return proxy, agent
        except MirrordError as exc:
            if agent.started or attempt:
                raise MirrordError(f"{exc}\n{agent.failure_hint()}") from None
    raise AssertionError("unreachable")


def _tell_agent(proxy: subprocess.Popen[bytes], agent: _Agent) -> None:
    """The agent's address and token, to an intproxy that waits for them."""
    assert proxy.stdin is not None
    line = json.dumps({"address": agent.address, "token": agent.token}) + "\n"
    try:
        proxy.stdin.write(line.encode())
        proxy.stdin.close()
    except OSError:
        pass  # it died: waiting for its ready line says how
