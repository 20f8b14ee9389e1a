"""Compiling the native relay from its C sources with the system's C compiler.

Used by the package build (setup.py's build hook), by `python -m mirrord.native.build`
and by the tests (sanitized builds, the fuzzing driver). Standard library only: it runs
before the package is installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES_DIR = HERE / "src"
LIBRARY_NAME = "libmirrord_relay.so"
#: the native data plane of the agent's and the intproxy's links (mirrord/wire/pump.py)
PUMP_LIBRARY_NAME = "libmirrord_pump.so"
PUMP = ["mp.c", "pump_frames.c", "pump.c"]
#: the relay proper; the sans-I/O cores are shared with the check driver
CORE = ["mp.c", "frames.c", "rules.c", "origin_slot.c"]
HOOKS = [
    "real.c",
    "fdstate.c",
    "names.c",
    "channel.c",
    "outgoing.c",
    "dns.c",
    "incoming.c",
    "origins.c",
    "process.c",
]
WARNINGS = ["-Wall", "-Wextra", "-Werror"]
SANITIZERS = [
    "-fsanitize=address,undefined",
    "-fno-omit-frame-pointer",
    "-fno-sanitize-recover=all",
]


class BuildError(RuntimeError):
    """The relay could not be compiled; the message says why in one line."""


def compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise BuildError("no C compiler found (install gcc, or set CC)")
    return cc


def _sources(names: list[str]) -> list[str]:
    return [str(SOURCES_DIR / name) for name in names]


def _stale(output: Path) -> bool:
    if not output.exists():
        return True
    built = output.stat().st_mtime
    return any(p.stat().st_mtime > built for p in SOURCES_DIR.iterdir())


def _compile(argv: list[str]) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    except OSError as exc:
        raise BuildError(f"cannot run {argv[0]}: {exc.strerror}") from None
    if proc.returncode:
        first = (proc.stderr.strip().splitlines() or ["(no output)"])[0]
        raise BuildError(f"{Path(argv[0]).name} failed: {first}\n{proc.stderr}")


def build_library(out_dir: Path, *, sanitize: bool = False, force: bool = False) -> Path:
    """Compile the relay (and the links' pump) into `out_dir`; an up-to-date library is kept."""
    build_pump(out_dir, sanitize=sanitize, force=force)
    return _shared_library(out_dir, LIBRARY_NAME, CORE + HOOKS, ["-ldl"], sanitize, force)


def build_pump(out_dir: Path, *, sanitize: bool = False, force: bool = False) -> Path:
    """Compile the links' native data plane into `out_dir` (a library loaded by ctypes)."""
    return _shared_library(out_dir, PUMP_LIBRARY_NAME, PUMP, [], sanitize, force)


def _shared_library(
    out_dir: Path, name: str, sources: list[str], libs: list[str], sanitize: bool, force: bool
) -> Path:
    output = out_dir / (name.replace(".so", ".asan.so") if sanitize else name)
    if not force and not _stale(output):
        return output
    out_dir.mkdir(parents=True, exist_ok=True)
    flags = ["-std=gnu11", "-shared", "-fPIC", "-fvisibility=hidden", "-pthread", *WARNINGS]
    flags += [*SANITIZERS, "-O1", "-g"] if sanitize else ["-O2"]
    partial = output.with_suffix(".tmp")
    _compile([compiler(), *flags, *_sources(sources), "-o", str(partial), *libs])
    partial.replace(output)  # a running program never sees a half-written library
    return output


def build_check(out_dir: Path, *, sanitize: bool = True) -> Path:
    """The check driver: the sans-I/O cores (frame decoder, rules) behind a stdin/stdout
    protocol, for fuzzing and for comparing decisions with the Python side."""
    output = out_dir / ("relay_check.asan" if sanitize else "relay_check")
    if not _stale(output):
        return output
    out_dir.mkdir(parents=True, exist_ok=True)
    flags = ["-std=gnu11", *WARNINGS, *(SANITIZERS + ["-O1", "-g"] if sanitize else ["-O2"])]
    _compile(
        [compiler(), *flags, *_sources([*CORE, "pump_frames.c", "check.c"]), "-o", str(output)]
    )
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mirrord.native.build")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the library")
    parser.add_argument("--asan", action="store_true", help="build with AddressSanitizer")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    try:
        print(build_library(args.out, sanitize=args.asan, force=args.force))
    except BuildError as exc:
        print(f"mirrord: native relay not built: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
