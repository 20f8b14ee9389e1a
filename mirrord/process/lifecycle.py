"""The life of a helper process (agent, intproxy): telling the CLI it is ready, and
ending in order on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


def run_loop(main: Callable[..., Awaitable[T]], *args: Any) -> T:
    """anyio.run on uvloop where it is installed (about a quarter less latency per relayed
    message, measured with bench/http_latency.py in relay mode); MIRRORD_NO_UVLOOP=1 or a
    missing uvloop means plain asyncio."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        use_uvloop = False
    else:
        use_uvloop = not os.environ.get("MIRRORD_NO_UVLOOP")
    return anyio.run(main, *args, backend_options={"use_uvloop": use_uvloop})


def announce_ready(**info: Any) -> None:
    """One JSON line on stdout, then stdout goes to /dev/null: nobody reads it after."""
    print(json.dumps({"ready": True, "pid": os.getpid(), **info}), flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


async def stop_on_signal(scope: anyio.CancelScope, log: logging.Logger) -> None:
    """SIGTERM/SIGINT cancel `scope`: the process ends the orderly way (rules removed,
    sockets closed), not with SystemExit thrown into the event loop."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("got signal %d: exiting", signum)
            scope.cancel()
            return


def begin(name: str, parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The start of a helper's main: its arguments (`--log-level` added), its log on stderr."""
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s {name} %(levelname)s %(message)s",
    )
    return args


def take_secrets(name: str, *variables: str) -> list[str]:
    """The session secrets a helper gets in its environment, removed from it at once so
    that nothing it starts inherits them; exit status 2 if one is missing."""
    values = [os.environ.pop(variable, "") for variable in variables]
    missing = [v for v, value in zip(variables, values, strict=True) if not value]
    if missing:
        print(f"mirrord {name}: {', '.join(missing)} not set", file=sys.stderr)
        raise SystemExit(2)
    return values
