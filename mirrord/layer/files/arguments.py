"""What the arguments of the patched calls mean: open() modes, os.open flags, paths.

Runs inside the user's app: standard library only.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

#: `open()` modes that only read (everything else may write).
READ_MODES = frozenset({"r", "rb", "rt", "br", "tr"})
#: `os.open` flags that make an open a write.
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
#: The os.open flags of an open() mode's kind, read-write so the content can be fetched.
KIND_FLAGS = {
    "r": os.O_RDWR,
    "w": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "a": os.O_RDWR | os.O_CREAT | os.O_APPEND,
    "x": os.O_RDWR | os.O_CREAT | os.O_EXCL,
}


class Mode(NamedTuple):
    kind: str  # "r" | "w" | "a" | "x"
    plus: bool
    binary: bool

    @property
    def raw(self) -> str:
        """The mode of the FileIO under it ("r", "w+", ...)."""
        return self.kind + ("+" if self.plus else "")


_PARSED: dict[str, Mode] = {}


def parse_mode(mode: str) -> Mode:
    """open()'s mode string; ValueError where io.open would raise one."""
    parsed = _PARSED.get(mode)
    if parsed is None:
        parsed = _parse_new(mode)
        if len(_PARSED) < 64:
            _PARSED[mode] = parsed
    return parsed


def _parse_new(mode: str) -> Mode:
    chars = set(mode)
    if chars - set("axrwb+t") or len(mode) > len(chars):
        raise ValueError(f"invalid mode: {mode!r}")
    kinds = [k for k in "rwax" if k in chars]
    if len(kinds) != 1 or ("t" in chars and "b" in chars):
        raise ValueError(f"invalid mode: {mode!r}")
    return Mode(kinds[0], "+" in chars, "b" in chars)


def open_args(
    file: Any,
    mode: Any = "r",
    buffering: int = -1,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
    closefd: bool = True,
    opener: Any = None,
) -> tuple[Any, Any, int, str | None, str | None, str | None, bool, Any]:
    return file, mode, buffering, encoding, errors, newline, closefd, opener


def path_of(value: Any) -> tuple[str, bool] | None:
    """(path as text, given as bytes) of a path argument; None for fds and non-paths."""
    if type(value) is str:
        return value, False
    if value is None or isinstance(value, int):
        return None
    try:
        value = os.fspath(value)
    except TypeError:
        return None
    if isinstance(value, bytes):
        return os.fsdecode(value), True
    return value, False


def bind_path(path: Any, *args: Any, dir_fd: Any = None, **kwargs: Any) -> Any:
    return path


def bind_stat(path: Any, *, dir_fd: Any = None, follow_symlinks: bool = True) -> tuple:
    return path, follow_symlinks


def bind_access(
    path: Any,
    mode: int,
    *,
    dir_fd: Any = None,
    effective_ids: bool = False,
    follow_symlinks: bool = True,
) -> tuple:
    return path, mode


def bind_os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: Any = None) -> tuple:
    return path, flags, mode


def bind_mkdir(path: Any, mode: int = 0o777, *, dir_fd: Any = None) -> tuple:
    return path, mode


def bind_rename(src: Any, dst: Any, *, src_dir_fd: Any = None, dst_dir_fd: Any = None) -> tuple:
    return src, dst


def sendable(path: str) -> bool:
    """Paths the wire can carry (text, no NUL): others stay local and fail there."""
    if "\0" in path:
        return False
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
