"""The file objects the app holds for remote files: written back on close, streamed, listed.

Runs inside the user's app: standard library and msgpack only.
"""

from __future__ import annotations

import errno
import io
import os
from typing import Any

from mirrord.layer.files.arguments import Mode
from mirrord.layer.files.remote import RemoteFs, WriteBack, memfd, seal, size_of, write_all
from mirrord.protocol import FileOpened
from mirrord.protocol.files import KIND_DIR, KIND_FILE, KIND_SYMLINK, MAX_FILE_CHUNK


def layered(
    raw: io.RawIOBase,
    mode: str,
    parsed: Mode,
    buffering: int,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
) -> Any:
    """The buffered/text objects io.open puts over a raw file (as in _pyio.open)."""
    try:
        if parsed.binary and (encoding is not None or errors is not None or newline is not None):
            raise ValueError("binary mode doesn't take an encoding, errors or newline argument")
        line_buffering = False
        if buffering == 1 or (buffering < 0 and raw.isatty()):
            buffering, line_buffering = -1, True
        if buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if parsed.binary:
                return raw
            raise ValueError("can't have unbuffered text I/O")
        buffer: io.BufferedIOBase
        if parsed.plus:
            buffer = io.BufferedRandom(raw, buffering)  # type: ignore[arg-type]
        elif parsed.kind == "r":
            buffer = io.BufferedReader(raw, buffering)  # type: ignore[arg-type]
        else:
            buffer = io.BufferedWriter(raw, buffering)  # type: ignore[arg-type]
        if parsed.binary:
            return buffer
        text = io.TextIOWrapper(buffer, encoding, errors, newline, line_buffering)
        text.mode = mode  # type: ignore[misc]
        return text
    except BaseException:
        raw.close()
        raise


class WriteBackFile(io.FileIO):
    """A real file (a memfd) whose content goes to the target when it is closed."""

    def __init__(self, fd: int, mode: str, back: WriteBack) -> None:
        super().__init__(fd, mode, closefd=True)
        self._mirrord_back: WriteBack | None = back
        self.name = back.filename

    def close(self) -> None:
        back, self._mirrord_back = getattr(self, "_mirrord_back", None), None
        if back is None or self.closed:
            super().close()
            return
        try:
            back.flush(self.fileno())
        finally:
            super().close()


class RemoteReader(io.RawIOBase):
    """A large remote file read on demand; `fileno()` turns it into a memfd."""

    def __init__(self, fs: RemoteFs, opened: FileOpened, filename: Any, remote: str):
        super().__init__()
        self._fs = fs
        self._handle = opened.handle
        self._size = size_of(opened)
        self._buf = opened.data
        self._buf_at = 0
        self._pos = 0
        self._fd = -1
        self._remote = remote
        self.name = filename
        self.mode = "rb"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _fetch(self, offset: int, size: int) -> bytes:
        return self._fs.read(self._handle, offset, size, self.name).data

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if self._fd >= 0:
            return os.readv(self._fd, [buffer])
        view = memoryview(buffer).cast("B")
        if not view:
            return 0
        at = self._pos - self._buf_at
        if not 0 <= at < len(self._buf):
            # big reads go straight through; small ones fetch a whole read buffer
            want = min(max(len(view), self._fs.read_buffer), MAX_FILE_CHUNK)
            self._buf, self._buf_at, at = self._fetch(self._pos, want), self._pos, 0
            if not self._buf:
                return 0
        n = min(len(view), len(self._buf) - at)
        view[:n] = self._buf[at : at + n]
        self._pos += n
        return n

    def readall(self) -> bytes:
        if self._fd >= 0:
            chunks = []
            while chunk := os.read(self._fd, MAX_FILE_CHUNK):
                chunks.append(chunk)
            return b"".join(chunks)
        parts = []
        at = self._pos - self._buf_at
        if 0 <= at < len(self._buf):
            parts.append(self._buf[at:])
            self._pos += len(self._buf) - at
        while chunk := self._fetch(self._pos, MAX_FILE_CHUNK):
            parts.append(chunk)
            self._pos += len(chunk)
        self._buf = b""
        return b"".join(parts)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if self._fd >= 0:
            return os.lseek(self._fd, offset, whence)
        if whence == os.SEEK_SET:
            target = offset
        elif whence == os.SEEK_CUR:
            target = self._pos + offset
        elif whence == os.SEEK_END:
            target = self._size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if target < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        self._pos = target
        return target

    def tell(self) -> int:
        return os.lseek(self._fd, 0, os.SEEK_CUR) if self._fd >= 0 else self._pos

    def fileno(self) -> int:
        """C code wants a descriptor: copy the whole file into a memfd now."""
        if self._fd < 0:
            fd = memfd(self._remote, sealable=True)
            try:
                offset = 0
                while chunk := self._fetch(offset, MAX_FILE_CHUNK):
                    write_all(fd, chunk)
                    offset += len(chunk)
                seal(fd)
                os.lseek(fd, self._pos, os.SEEK_SET)
            except BaseException:
                os.close(fd)
                raise
            self._fd, self._buf = fd, b""
            self._release()
        return self._fd

    def _release(self) -> None:
        handle, self._handle = self._handle, 0
        if handle:
            self._fs.close_handle(handle)

    def close(self) -> None:
        if not self.closed:
            self._release()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        super().close()


class RemoteDirEntry:
    """What os.scandir yields, for an entry of a remote directory."""

    __slots__ = ("name", "path", "_kind", "_target", "_inode", "_remote", "_fs", "_stats")

    def __init__(
        self, fs: RemoteFs, name: Any, path: Any, remote: str, kinds: tuple[int, int, int]
    ) -> None:
        self.name = name
        self.path = path
        self._fs = fs
        self._remote = remote
        self._kind, self._target, self._inode = kinds
        self._stats: dict[bool, os.stat_result] = {}

    def inode(self) -> int:
        return self._inode

    def is_symlink(self) -> bool:
        return self._kind == KIND_SYMLINK

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return (self._target if follow_symlinks else self._kind) == KIND_DIR

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        return (self._target if follow_symlinks else self._kind) == KIND_FILE

    def is_junction(self) -> bool:
        return False

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        found = self._stats.get(follow_symlinks)
        if found is None:
            found = self._stats[follow_symlinks] = self._fs.stat(
                self._remote, follow_symlinks, self.path
            )
        return found

    def __fspath__(self) -> Any:
        return self.path

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"


class RemoteScandir:
    """The iterator (and context manager) os.scandir returns."""

    def __init__(self, entries: list[RemoteDirEntry]) -> None:
        self._entries = iter(entries)

    def __iter__(self) -> RemoteScandir:
        return self

    def __next__(self) -> RemoteDirEntry:
        return next(self._entries)

    def close(self) -> None:
        self._entries = iter(())

    def __enter__(self) -> RemoteScandir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
