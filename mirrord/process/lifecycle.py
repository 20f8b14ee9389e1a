"""The life of a helper process (agent, intproxy): telling the CLI it is ready, and
ending in order on SIGTERM/SIGINT."""

from __future__ import annotations

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
