"""What the CLI can tell about the program it is about to run: will mirrord's Python layer
load into it, and if not, why (for the warning when no layer ever connects)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

_PYTHON = re.compile(r"^(python|pypy)[0-9.]*$")
#: Interpreter options that keep the hook out: -E/-I ignore PYTHONPATH, -S skips site.
_HOOK_BLOCKING = {"E": "-E ignores PYTHONPATH", "I": "-I ignores PYTHONPATH", "S": "-S skips site"}


def interpreter_of(program: str) -> tuple[str, list[str]]:
    """The program that really runs (a script's #! interpreter) and its #! options."""
    path = shutil.which(program) or program
    try:
        with open(path, "rb") as f:
            first = f.readline(256)
    except OSError:
        return path, []
    if not first.startswith(b"#!"):
        return path, []
    words = first[2:].decode(errors="replace").split()
    if not words:
        return path, []
    if Path(words[0]).name == "env":
        words = [w for w in words[1:] if not w.startswith("-")] or words
    return words[0], words[1:]


def is_python(program: str) -> bool:
    """Is `program` a Python interpreter, or a script that one runs (console scripts)?"""
    return bool(_PYTHON.match(Path(interpreter_of(program)[0]).name))


def python_blocker(argv: Sequence[str]) -> str | None:
    """Why the hook cannot load into `argv` although it is Python, or None."""
    for arg in argv[1:]:
        if not arg.startswith("-") or arg == "-" or arg.startswith("--"):
            break
        for letter, why in _HOOK_BLOCKING.items():
            if letter in arg[1:]:
                return f"the interpreter option {why}"
        if arg in ("-c", "-m") or arg[1:].endswith(("c", "m", "W", "X")):
            break  # the next word is an argument of this option, then the program
    return None


def no_layer_hint(argv: Sequence[str]) -> str:
    """The likeliest reason why a program under mirrord would run without its layer."""
    interpreter, shebang_args = interpreter_of(argv[0])
    if not is_python(interpreter):
        return f"{Path(interpreter).name} is not a Python interpreter"
    blocker = python_blocker([interpreter, *shebang_args, *argv[1:]])
    if blocker is not None:
        return blocker
    return (
        "its Python did not load mirrord's hook: a wrapper may have reset PYTHONPATH, or "
        "another sitecustomize.py comes first on its path and does not chain to the next"
    )
