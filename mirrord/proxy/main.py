"""`python -m mirrord.proxy`: connect to the agent, serve layers, end with the app."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import anyio
import anyio.abc

from mirrord.kube.client import PENDING_AGENT, KubeAccess
from mirrord.process.lifecycle import (
    announce_ready,
    begin,
    run_loop,
    stop_on_signal,
    take_secrets,
)
from mirrord.protocol import ProtocolError, origins
from mirrord.proxy.agent_client import AgentClient
from mirrord.proxy.incoming import IncomingRouter, create_origin_table
from mirrord.proxy.layer_server import ProxyState, handle_layer
from mirrord.system.procfs import process_start
from mirrord.wire.carrier import Carrier
from mirrord.wire.connect import connect_to
from mirrord.wire.link import Link
from mirrord.wire.serve import accept_forever

log = logging.getLogger("mirrord.proxy")
AGENT_TOKEN_ENV = "MIRRORD_AGENT_TOKEN"
PROXY_TOKEN_ENV = "MIRRORD_PROXY_TOKEN"
#: After the app and its last layer are gone, linger this long for late children.
GRACE = 0.5
#: With no layer ever connected and no pid to watch, give up after this long.
FIRST_LAYER_TIMEOUT = 60.0
#: A program that ran this long without any layer connecting gets the user's warning.
NO_LAYER_AFTER = 3.0


async def watch_lifetime(state: ProxyState, app_pid: int | None) -> None:
    """Return when the app and every layer are gone."""
    started = time.monotonic()
    while True:
        await anyio.sleep(0.1)
        if state.layers:
            continue
        idle = time.monotonic() - state.last_change
        if app_pid is not None:
            if process_start(app_pid) is None and idle >= GRACE:
                return
        elif (
            state.ever_connected
            and idle >= GRACE
            or time.monotonic() - started > FIRST_LAYER_TIMEOUT
        ):
            return


async def warn_without_layer(state: ProxyState, app_pid: int | None, fd: int, text: str) -> None:
    """One line for the user when the program runs on and nothing of it reaches us."""
    try:
        await anyio.sleep(NO_LAYER_AFTER)
        if state.app_layer_seen or (app_pid is not None and process_start(app_pid) is None):
            return
        line = (
            f"mirrord: warning: no mirrord layer connected within {NO_LAYER_AFTER:.0f}s, so "
            f"the program's traffic does not go through the target: {text}\n"
        )
        try:
            os.write(fd, line.encode())
        except OSError:
            pass
    finally:
        os.close(fd)  # whoever reads the user's stderr must not wait for us to exit


async def run(args: argparse.Namespace, agent_token: str, proxy_token: str) -> bool:
    """Serve until the app is gone; True if the agent link stayed up all along."""
    why_ended = None
    stream: socket.socket | Carrier
    if args.agent.startswith("kube:"):
        # a cluster agent: through a Kubernetes port-forward that we open ourselves
        from mirrord.kube.forward import connect_forward

        with anyio.fail_after(30):
            forward = await connect_forward(
                args.agent, KubeAccess(args.kubeconfig, args.kube_context)
            )
        stream, why_ended = forward.stream, forward.why_ended
    else:
        stream = await connect_to(args.agent, timeout=30)
    link = Link(stream, accept_fds=True)
    healthy = False  # stays so when a signal ends us
    with anyio.fail_after(30):
        await link.handshake(agent_token, "intproxy")
    if args.no_fd_passing or not link.can_pass_fds:
        # relayed bytes go through a native pump (the pump takes no descriptors from the
        # agent: with hand-over the agent's sockets come to us, and the layers)
        link = link.with_pump()
    async with anyio.create_task_group() as tg:
        agent = AgentClient(link, tg)
        agent.why_ended = why_ended
        tg.start_soon(agent.run)
        tg.start_soon(agent.keepalive)
        tg.start_soon(stop_on_signal, tg.cancel_scope, log)
        table = create_origin_table(origins.table_path(args.socket))
        incoming = IncomingRouter(agent, tg, pass_fds=not args.no_fd_passing, table=table)
        agent.on_incoming = incoming.on_incoming
        tg.start_soon(incoming.listeners.run_sweeps)
        state = ProxyState(
            token=proxy_token, agent=agent, incoming=incoming, pass_fds=not args.no_fd_passing
        )
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # only our user may talk to the intproxy
        try:
            listener.bind(args.socket)
        finally:
            os.umask(old)
        listener.listen(1024)
        tg.start_soon(accept_forever, listener, lambda s: handle_layer(state, s))
        if args.warn_fd is not None and args.no_layer_warning:
            tg.start_soon(
                warn_without_layer, state, args.watch_pid, args.warn_fd, args.no_layer_warning
            )
        announce_ready(socket=args.socket)
        await watch_lifetime(state, args.watch_pid)
        log.info("the app is gone: exiting")
        # the app saw no trouble if the agent link outlived its last layer
        healthy = agent.gone is None or agent.gone_at >= state.last_change
        tg.cancel_scope.cancel()
    await link.aclose()
    return healthy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mirrord intproxy")
    parser.add_argument(
        "--agent", required=True, help="HOST:PORT, unix:PATH or kube:NAMESPACE/POD:PORT"
    )
    parser.add_argument("--kubeconfig", help="for a kube: agent (default: kubectl's)")
    parser.add_argument("--kube-context", help="for a kube: agent (default: the current)")
    parser.add_argument("--socket", required=True, help="unix socket path to serve layers on")
    parser.add_argument("--watch-pid", type=int, default=None)
    parser.add_argument("--workdir", help="the session's folder, removed after a clean exit")
    parser.add_argument(
        "--no-fd-passing",
        action="store_true",
        help="always relay bytes, even when the agent could hand over its sockets",
    )
    parser.add_argument("--warn-fd", type=int, help="the user's stderr, for warnings")
    parser.add_argument("--no-layer-warning", help="why no layer may connect, if none does")
    args = begin("intproxy", parser, argv)
    if args.agent == PENDING_AGENT:
        # a cluster agent still being made: get ready meanwhile, then learn where it is
        from mirrord.kube.forward import ForwardError, wait_for_agent

        try:
            found = wait_for_agent(KubeAccess(args.kubeconfig, args.kube_context))
        except ForwardError as exc:
            print(f"mirrord intproxy: {exc}", file=sys.stderr)
            return 1
        if found is None:
            return 2  # the CLI gave up on the agent
        args.agent, os.environ[AGENT_TOKEN_ENV] = found
    agent_token, proxy_token = take_secrets("intproxy", AGENT_TOKEN_ENV, PROXY_TOKEN_ENV)
    healthy = False
    try:
        healthy = run_loop(run, args, agent_token, proxy_token)
    except (OSError, TimeoutError, ProtocolError, anyio.EndOfStream) as exc:
        print(f"mirrord intproxy: cannot reach the agent at {args.agent}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        # a local agent is shared by the target's sessions: it leaves on its own when idle
        Path(args.socket).unlink(missing_ok=True)
        Path(origins.table_path(args.socket)).unlink(missing_ok=True)
    if healthy and args.workdir:
        # a session that went well leaves nothing; otherwise its log stays for a look
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
