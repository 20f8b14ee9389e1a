"""The life of a helper process (agent, intproxy): telling the CLI it is ready, and
ending in order on SIGTERM/SIGINT."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from typing import Any

import anyio


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
