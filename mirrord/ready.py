"""How a helper process (agent, intproxy) tells the CLI it is ready."""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def announce_ready(**info: Any) -> None:
    """One JSON line on stdout, then stdout goes to /dev/null: nobody reads it after."""
    print(json.dumps({"ready": True, "pid": os.getpid(), **info}), flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
