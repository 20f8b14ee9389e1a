"""What a program needs to run with the native relay: LD_PRELOAD, the decision table,
and a word when a program cannot take a preloaded library at all."""

from __future__ import annotations

import os
import shutil
import stat
import struct
from collections.abc import Mapping
from pathlib import Path

from mirrord import native
from mirrord.config import MirrordConfig
from mirrord.native.table import ENV as RULES_ENV
from mirrord.native.table import relay_table
from mirrord.settings.contract import LayerSettings
from mirrord.settings.debugger import IGNORE_ENV, DebuggerPorts

HOOK_DIR_ENV = "MIRRORD_HOOK_DIR"

#: mirrord's build tools, skipped when skip_build_tools is on (its default)
BUILD_TOOLS = (
    "as", "cc", "ld", "go", "air", "asm", "cc1", "cgo", "dlv", "gcc", "git", "link", "math",
    "cargo", "hpack", "rustc", "compile", "collect2", "cargo-watch", "debugserver",
    "jspawnhelper", "bazel-real", "clang",
)  # fmt: skip


def skipped_processes(cfg: MirrordConfig) -> list[str]:
    """skip_processes, plus the build tools as mirrord adds them."""
    names = list(cfg.skip_processes or [])
    if cfg.skip_build_tools is not False:
        names += [*BUILD_TOOLS, *(cfg.skip_extra_build_tools or [])]
    return list(dict.fromkeys(names))


def native_env(
    cfg: MirrordConfig, layer_settings: dict, hook_dir: Path, env: Mapping[str, str]
) -> dict[str, str]:
    """Variables that preload the relay into the program and every descendant (none
    when the relay was not built)."""
    preload = native.preload()
    if not preload:
        return {}
    current = [p for p in env.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p]
    debugger = DebuggerPorts.parse(env.get(IGNORE_ENV, ""))
    table = relay_table(LayerSettings.from_dict(layer_settings), skipped_processes(cfg), debugger)
    return {
        "LD_PRELOAD": ":".join(dict.fromkeys([*preload, *current])),
        RULES_ENV: table,
        HOOK_DIR_ENV: str(hook_dir),
    }


def preload_blocker(program: str) -> str | None:
    """Why `program` cannot take a preloaded library ("statically linked", "set-uid"),
    or None. A script is judged by its interpreter."""
    path = Path(program)
    for _ in range(4):  # #! chains are short
        try:
            info = path.stat()
            with path.open("rb") as f:
                head = f.read(4096)
        except OSError:
            return None
        if info.st_mode & (stat.S_ISUID | stat.S_ISGID):
            return "set-uid" if info.st_mode & stat.S_ISUID else "set-gid"
        if head.startswith(b"#!"):
            words = head[2:].split(b"\n", 1)[0].split()
            if not words:
                return None
            path = Path(os.fsdecode(words[0]))
            continue
        return "statically linked" if _static_elf(head, path) else None
    return None


def _static_elf(head: bytes, path: Path) -> bool:
    """An ELF executable without a program interpreter (PT_INTERP) links no libraries."""
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit: what we run on
        return False
    endian = "<" if head[5] == 1 else ">"
    (phoff,) = struct.unpack_from(endian + "Q", head, 0x20)
    phentsize, phnum = struct.unpack_from(endian + "HH", head, 0x36)
    try:
        with path.open("rb") as f:
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    PT_INTERP = 3
    kinds = {
        struct.unpack_from(endian + "I", table, i * phentsize)[0]
        for i in range(phnum)
        if (i + 1) * phentsize <= len(table)
    }
    # (a static-pie has no interpreter either: no loader reads LD_PRELOAD)
    return PT_INTERP not in kinds


def exec_warning(command: str) -> str | None:
    """What `mirrord exec` says before running `command`, if anything."""
    program = shutil.which(command) or command
    if not Path(program).exists():
        return None  # the run itself reports a missing program
    blocker = preload_blocker(program)
    if blocker:
        return f"{command} is {blocker}: it cannot be intercepted and runs unmodified"
    if not native.preload() and not Path(command).name.startswith("python"):
        return (
            f"the native relay is not built (no C compiler when mirrord was installed): "
            f"{command} gets the target's environment, but its traffic is not intercepted"
        )
    return None
