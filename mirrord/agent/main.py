"""`python -m mirrord.agent`: enter the target, listen where the CLI said, serve."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib
import logging
import os
import pkgutil
import socket
import sys
from pathlib import Path

from mirrord.agent.iptables import IptablesError, remove_stale_chains
from mirrord.agent.server import serve
from mirrord.agent.session import AgentState
from mirrord.process.lifecycle import announce_ready, begin, run_loop, take_secrets
from mirrord.targets.container import ContainerTarget
from mirrord.targets.local import LocalTarget, TargetError, read_environ

TOKEN_ENV = "MIRRORD_AGENT_TOKEN"


def parse_listen(text: str) -> socket.socket:
    """`127.0.0.1:PORT` (loopback only) or `unix:/path`; bound before entering the target."""
    if text.startswith("unix:"):
        path = text[5:]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # only our user may connect
        try:
            sock.bind(path)
        finally:
            os.umask(old)
    else:
        host, _, port = text.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise SystemExit(f"mirrord agent: refusing to listen on {host}: loopback only")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port or 0)))
    sock.listen(128)
    return sock


#: Imported on demand (by the features, by anyio itself): a container's mount namespace
#: does not have our files, so a container target loads all of it before entering.
LAZY_PACKAGES = (
    "anyio",
    "h11",
    "mirrord.agent",
    "mirrord.http",
    "mirrord.process",
    "mirrord.protocol",
    "mirrord.system",
    "mirrord.targets",
    "mirrord.wire",
)
SKIPPED = ("__main__", "_trio", "pytest_plugin")
LAZY_MODULES = ("encodings.idna", "uvloop", "scapy.arch.common", "scapy.data")


def preload_modules() -> None:
    names = list(LAZY_MODULES)
    for package in LAZY_PACKAGES:
        module = importlib.import_module(package)
        found = pkgutil.walk_packages(module.__path__, f"{package}.")
        # not __main__ (it runs), nor what we never use (anyio's trio backend and pytest plugin)
        names += [i.name for i in found if not i.name.endswith(SKIPPED)]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # optional here (uvloop, scapy, anyio's trio backend): done without


def describe(sock: socket.socket) -> str:
    addr = sock.getsockname()
    return f"unix:{addr}" if sock.family == socket.AF_UNIX else f"{addr[0]}:{addr[1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mirrord agent")
    parser.add_argument("--target", default="targetless")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--idle-timeout", type=float, default=5.0)
    parser.add_argument(
        "--first-client-timeout",
        type=float,
        default=None,
        help="how long to wait for the first client (default: the idle timeout)",
    )
    args = begin("agent", parser, argv)
    (token,) = take_secrets("agent", TOKEN_ENV)
    try:
        target: LocalTarget | ContainerTarget
        if args.target.startswith("container/"):
            target = ContainerTarget.parse(args.target)
            # our own files are not where the target's mounts are: load what we use later
            preload_modules()
        else:
            target = LocalTarget.parse(args.target)
        pid = target.process()
        # read the environment before entering the target's mounts (and its /proc)
        env = read_environ(pid) if pid else {}
        listen_sock = parse_listen(args.listen)
        target.enter()
    except (TargetError, OSError) as exc:
        print(f"mirrord agent: {exc}", file=sys.stderr)
        return 1
    state = AgentState(
        token=token,
        env=env,
        idle_timeout=args.idle_timeout,
        first_client_timeout=args.first_client_timeout,
    )
    _remove_stale_rules()
    address = describe(listen_sock)
    socket_inode = os.stat(address[5:]).st_ino if address.startswith("unix:") else 0
    announce_ready(address=address)
    try:
        run_loop(_run, listen_sock, state)
    except KeyboardInterrupt:
        pass
    finally:
        # also on SIGTERM: no iptables rule may outlive the agent
        state.close_shared()
        if address.startswith("unix:"):
            _remove_socket_file(Path(address[5:]), socket_inode)
    return 0


def _remove_socket_file(path: Path, inode: int) -> None:
    """Remove our socket and its token file, unless a successor already replaced them.

    The CLI holds the directory's lock while it finds or starts an agent; so do we."""
    lock_path = path.parent / "lock"
    with open(lock_path, "a") if lock_path.exists() else contextlib.nullcontext() as lock:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.stat().st_ino != inode:
                return
        except FileNotFoundError:
            return
        path.unlink(missing_ok=True)
        Path(f"{path}.token").unlink(missing_ok=True)


def _remove_stale_rules() -> None:
    """Rules left in this namespace by an agent that was killed before it could clean up."""
    try:
        remove_stale_chains()
    except IptablesError as exc:
        logging.getLogger("mirrord.agent").info("no iptables here: %s", exc)


async def _run(listen_sock: socket.socket, state: AgentState) -> None:
    await serve(listen_sock, state)
