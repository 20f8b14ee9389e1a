"""Remote files: the app opens, stats and lists the target's files, by mirrord's fs policy.

`fs_filter.FsPolicy` decides per path: local (the real call runs), remote (the agent does
it in the target's mount namespace) or not found. A remote file opened for reading becomes
a real descriptor (`memfd_create`) that C code can use too; large files opened with
`open()` are streamed and only copied into a memfd when something asks for `fileno()`.
Files opened for writing live in a memfd and are written back to the target on close.

Runs inside the user's app: standard library, wrapt and msgpack only.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import posixpath
import sys
from dataclasses import dataclass
from typing import Any, NamedTuple

import wrapt

from mirrord.layer.client import ProxyUnavailable
from mirrord.layer.context import Context
from mirrord.layer.patching import PatchFamily
from mirrord.protocol import (
    FileAccess,
    FileClose,
    FileData,
    FileDone,
    FileEntries,
    FileLink,
    FileListDir,
    FileMkdir,
    FileOpen,
    FileOpened,
    FileRead,
    FileReadlink,
    FileRename,
    FileRmdir,
    FileStat,
    FileStatResult,
    FileTruncate,
    FileUnlink,
    FileWrite,
    FileWritten,
    Message,
    RequestFailed,
)
from mirrord.protocol.files import (
    KIND_DIR,
    KIND_FILE,
    KIND_SYMLINK,
    MAX_FILE_CHUNK,
    STAT_FIELDS,
)
from mirrord.settings.fs_filter import (
    LOCAL,
    NOT_FOUND,
    FsPolicy,
    python_directories,
    runtime_local_patterns,
)

#: `open()` modes that only read (everything else may write).
_READ_MODES = frozenset({"r", "rb", "rt", "br", "tr"})
#: `os.open` flags that make an open a write.
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
#: Remote files bigger than this are streamed by `open()` instead of copied up front.
STREAM_ABOVE = 2 * MAX_FILE_CHUNK
#: mirrord's default `feature.fs.readonly_file_buffer`: how much one small read fetches.
DEFAULT_READ_BUFFER = 128_000
#: Decisions remembered per access kind before the cache starts over.
CACHE_LIMIT = 8192
_SEALS = (
    getattr(fcntl, "F_SEAL_SEAL", 1)
    | getattr(fcntl, "F_SEAL_SHRINK", 2)
    | getattr(fcntl, "F_SEAL_GROW", 4)
    | getattr(fcntl, "F_SEAL_WRITE", 8)
)
_F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)

Decision = tuple[str, str]  # (LOCAL | REMOTE | NOT_FOUND, path to use remotely)


# --------------------------------------------------------------------------- helpers


def _os_error(code: int, filename: Any, filename2: Any = None) -> OSError:
    """The OSError (its errno subclass) a local call would raise for `filename`."""
    code = code or errno.EIO
    if filename2 is not None:
        return OSError(code, os.strerror(code), filename, None, filename2)
    return OSError(code, os.strerror(code), filename)


def _stat_result(values: list[int]) -> os.stat_result:
    if len(values) != len(STAT_FIELDS):
        raise OSError(errno.EIO, "mirrord: malformed stat from the agent")
    mode, ino, dev, nlink, uid, gid, size, atime, mtime, ctime, blksize, blocks, rdev = values
    return os.stat_result(
        (mode, ino, dev, nlink, uid, gid, size, atime // 10**9, mtime // 10**9, ctime // 10**9),
        {
            "st_atime": atime / 1e9,
            "st_mtime": mtime / 1e9,
            "st_ctime": ctime / 1e9,
            "st_atime_ns": atime,
            "st_mtime_ns": mtime,
            "st_ctime_ns": ctime,
            "st_blksize": blksize,
            "st_blocks": blocks,
            "st_rdev": rdev,
        },
    )


def _memfd(name: str, sealable: bool) -> int:
    flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealable else 0)
    return os.memfd_create(f"mirrord:{posixpath.basename(name)[:200]}", flags)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Mode(NamedTuple):
    kind: str  # "r" | "w" | "a" | "x"
    plus: bool
    binary: bool


_PARSED_MODES: dict[str, _Mode] = {}


def _parse_mode(mode: str) -> _Mode:
    """open()'s mode string; ValueError where io.open would raise one."""
    parsed = _PARSED_MODES.get(mode)
    if parsed is None:
        parsed = _parse_new_mode(mode)
        if len(_PARSED_MODES) < 64:
            _PARSED_MODES[mode] = parsed
    return parsed


def _parse_new_mode(mode: str) -> _Mode:
    chars = set(mode)
    if chars - set("axrwb+t") or len(mode) > len(chars):
        raise ValueError(f"invalid mode: {mode!r}")
    kinds = [k for k in "rwax" if k in chars]
    if len(kinds) != 1 or ("t" in chars and "b" in chars):
        raise ValueError(f"invalid mode: {mode!r}")
    return _Mode(kinds[0], "+" in chars, "b" in chars)


def _open_args(
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


def _layered(
    raw: io.RawIOBase,
    mode: str,
    parsed: _Mode,
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


# ---------------------------------------------------------------- files the app holds


@dataclass
class _WriteBack:
    """A remote file open for writing: its content lives in a memfd until close."""

    files: FilePatches
    handle: int
    filename: Any

    def flush(self, fd: int) -> None:
        """The whole content back to the target, its size, then close the remote file."""
        try:
            offset = 0
            while chunk := os.pread(fd, MAX_FILE_CHUNK, offset):
                self.files.call(
                    FileWrite(req=0, handle=self.handle, offset=offset, data=chunk),
                    FileWritten,
                    self.filename,
                )
                offset += len(chunk)
            self.files.call(
                FileTruncate(req=0, handle=self.handle, size=offset), FileDone, self.filename
            )
        finally:
            self.files.close_handle(self.handle)


class _WriteBackFile(io.FileIO):
    """A real file (a memfd) whose content goes to the target when it is closed."""

    def __init__(self, fd: int, mode: str, back: _WriteBack) -> None:
        super().__init__(fd, mode, closefd=True)
        self._mirrord_back: _WriteBack | None = back
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


class _RemoteReader(io.RawIOBase):
    """A large remote file read on demand; `fileno()` turns it into a memfd."""

    def __init__(self, files: FilePatches, opened: FileOpened, filename: Any, remote: str):
        super().__init__()
        self._files = files
        self._handle = opened.handle
        self._size = opened.stat[STAT_FIELDS.index("st_size")]
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
        reply = self._files.call(
            FileRead(req=0, handle=self._handle, offset=offset, size=size), FileData, self.name
        )
        assert isinstance(reply, FileData)
        return reply.data

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
            want = min(max(len(view), self._files.read_buffer), MAX_FILE_CHUNK)
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
            fd = _memfd(self._remote, sealable=True)
            try:
                offset = 0
                while chunk := self._fetch(offset, MAX_FILE_CHUNK):
                    _write_all(fd, chunk)
                    offset += len(chunk)
                fcntl.fcntl(fd, _F_ADD_SEALS, _SEALS)
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
            self._files.close_handle(handle)

    def close(self) -> None:
        if not self.closed:
            self._release()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        super().close()


class _RemoteDirEntry:
    """What os.scandir yields, for an entry of a remote directory."""

    __slots__ = ("name", "path", "_kind", "_target", "_inode", "_remote", "_files", "_stats")

    def __init__(
        self, files: FilePatches, name: Any, path: Any, remote: str, kinds: tuple[int, int, int]
    ) -> None:
        self.name = name
        self.path = path
        self._files = files
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
            reply = self._files.call(
                FileStat(req=0, path=self._remote, follow_symlinks=follow_symlinks),
                FileStatResult,
                self.path,
            )
            assert isinstance(reply, FileStatResult)
            found = self._stats[follow_symlinks] = _stat_result(reply.stat)
        return found

    def __fspath__(self) -> Any:
        return self.path

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"


class _RemoteScandir:
    """The iterator (and context manager) os.scandir returns."""

    def __init__(self, entries: list[_RemoteDirEntry]) -> None:
        self._entries = iter(entries)

    def __iter__(self) -> _RemoteScandir:
        return self

    def __next__(self) -> _RemoteDirEntry:
        return next(self._entries)

    def close(self) -> None:
        self._entries = iter(())

    def __enter__(self) -> _RemoteScandir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- the patches


def _path_of(value: Any) -> tuple[str, bool] | None:
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


def _bind_path(path: Any, *args: Any, dir_fd: Any = None, **kwargs: Any) -> Any:
    return path


def _bind_stat(path: Any, *, dir_fd: Any = None, follow_symlinks: bool = True) -> tuple:
    return path, follow_symlinks


def _bind_access(
    path: Any,
    mode: int,
    *,
    dir_fd: Any = None,
    effective_ids: bool = False,
    follow_symlinks: bool = True,
) -> tuple:
    return path, mode


def _bind_os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: Any = None) -> tuple:
    return path, flags, mode


def _bind_mkdir(path: Any, mode: int = 0o777, *, dir_fd: Any = None) -> tuple:
    return path, mode


def _bind_rename(src: Any, dst: Any, *, src_dir_fd: Any = None, dst_dir_fd: Any = None) -> tuple:
    return src, dst


class FilePatches(PatchFamily):
    """open/os.open/stat/lstat/access/listdir/scandir/readlink (+ writes) on remote paths."""

    def __init__(self, ctx: Context) -> None:
        super().__init__()
        self.ctx = ctx
        fs = ctx.settings.fs
        home = os.environ.get("HOME")
        try:
            cwd: str | None = os.getcwd()
        except OSError:
            cwd = None
        # the session's own files (intproxy socket, logs) are always this machine's
        session_dir = os.path.dirname(getattr(ctx.client, "path", "") or "")
        runtime = runtime_local_patterns(
            cwd=cwd,
            home=home,
            tmpdir=os.environ.get("TMPDIR") or "/tmp",
            executable=sys.executable,
            directories=[*python_directories(), session_dir],
        )
        self.policy = FsPolicy.from_settings(fs, runtime_local=runtime, home=home)
        buffer = fs.readonly_file_buffer or DEFAULT_READ_BUFFER
        self.read_buffer = max(4096, min(buffer, MAX_FILE_CHUNK))
        self._reads: dict[str, Decision] = {}
        self._writes: dict[str, Decision] = {}
        # os.open()ed remote files being written: fd -> where their content goes on close
        self._write_fds: dict[int, _WriteBack] = {}
        self._sqlite_hook = False

    # -- what is patched -----------------------------------------------------------

    def patches(self) -> list[tuple[str, str, Any]]:
        if self.policy.mode == "local":
            return []  # nothing to decide: the app's calls stay untouched
        found: list[tuple[str, str, Any]] = [
            ("builtins", "open", self._open),
            ("io", "open", self._open),
            ("os", "open", self._os_open),
            ("os", "stat", self._stat),
            ("os", "lstat", self._lstat),
            ("os", "access", self._access),
            ("os", "listdir", self._listdir),
            ("os", "scandir", self._scandir),
            ("os", "readlink", self._readlink),
        ]
        if self.policy.may_write:
            found += [
                ("os", "remove", self._unlink),
                ("os", "unlink", self._unlink),
                ("os", "mkdir", self._mkdir),
                ("os", "rmdir", self._rmdir),
                ("os", "rename", self._rename),
                ("os", "replace", self._rename),
                ("os", "close", self._close),
            ]
        return found

    def install(self) -> None:
        super().install()
        if not self.installed:
            return
        if not self._sqlite_hook:
            # sqlite3 is patched when (if) the app imports it: no import cost otherwise
            wrapt.register_post_import_hook(self._patch_sqlite, "sqlite3")
            self._sqlite_hook = True
        elif "sqlite3" in sys.modules:  # installed again after an uninstall
            self._patch_sqlite(sys.modules["sqlite3"])

    def _patch_sqlite(self, module: Any) -> None:
        if not self.installed:
            return
        for owner in (module, getattr(module, "dbapi2", None)):
            if owner is None or isinstance(owner.__dict__.get("connect"), wrapt.ObjectProxy):
                continue
            previous = owner.__dict__.get("connect")
            wrapt.wrap_function_wrapper(owner, "connect", self._sqlite_connect)
            self._undo.append((owner, "connect", previous))

    # -- deciding ------------------------------------------------------------------

    def route(self, path: str, write: bool) -> Decision:
        """The policy's decision for `path`, remembered."""
        cache = self._writes if write else self._reads
        found = cache.get(path)
        if found is None:
            found = self.policy.decide(path, write)
            if found[0] is not LOCAL and not _sendable(found[1]):
                found = (LOCAL, path)  # the local call reports what is wrong with it
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            cache[path] = found
        return found

    def _where(self, value: Any, write: bool) -> tuple[str, str, bool] | None:
        """(decision, remote path, given as bytes) unless the call stays local."""
        path = _path_of(value)
        if path is None:
            return None
        decision, remote = self.route(path[0], write)
        if decision is LOCAL:
            return None
        if decision is NOT_FOUND:
            raise _os_error(errno.ENOENT, value)
        return decision, remote, path[1]

    # -- talking to the agent ------------------------------------------------------

    def call(
        self, msg: Message, expect: type[Message], filename: Any, filename2: Any = None
    ) -> Any:
        """Send a request; its reply, or the OSError a local call would raise."""
        try:
            reply = self.ctx.client.request(msg)
        except ProxyUnavailable as exc:
            raise OSError(errno.EIO, f"mirrord: {exc}", filename) from None
        if isinstance(reply, RequestFailed):
            raise _os_error(reply.errno, filename, filename2)
        if not isinstance(reply, expect):
            raise OSError(errno.EIO, f"mirrord: unexpected {reply.TAG} reply", filename)
        return reply

    def close_handle(self, handle: int) -> None:
        if handle:
            try:
                self.ctx.client.request(FileClose(req=0, handle=handle))
            except OSError:
                pass  # the agent closes it anyway when the session ends

    def _remote_open(self, remote: str, flags: int, filename: Any, read_ahead: int) -> FileOpened:
        msg = FileOpen(req=0, path=remote, flags=flags, mode=0o666, read_ahead=read_ahead)
        reply: FileOpened = self.call(msg, FileOpened, filename)
        return reply

    def _fetch_into(self, fd: int, opened: FileOpened, filename: Any) -> None:
        """Append the rest of a remote file (after its read-ahead) to `fd`."""
        _write_all(fd, opened.data)
        offset = len(opened.data)
        if opened.handle and not opened.eof:
            while True:
                reply = self.call(
                    FileRead(req=0, handle=opened.handle, offset=offset, size=MAX_FILE_CHUNK),
                    FileData,
                    filename,
                )
                _write_all(fd, reply.data)
                offset += len(reply.data)
                if reply.eof or not reply.data:
                    break

    def materialise(self, remote: str, filename: Any) -> int:
        """A read-only memfd (sealed) with the whole remote file, at offset 0."""
        opened = self._remote_open(remote, os.O_RDONLY, filename, MAX_FILE_CHUNK)
        return self._sealed_copy(remote, opened, filename)

    def _sealed_copy(self, remote: str, opened: Any, filename: Any) -> int:
        """Fetch an opened remote file into a sealed memfd at offset 0; closes the handle."""
        try:
            fd = _memfd(remote, sealable=True)
            try:
                self._fetch_into(fd, opened, filename)
                fcntl.fcntl(fd, _F_ADD_SEALS, _SEALS)
                os.lseek(fd, 0, os.SEEK_SET)
            except BaseException:
                os.close(fd)
                raise
        finally:
            self.close_handle(opened.handle)
        return fd

    def _open_for_writing(self, remote: str, flags: int, filename: Any) -> tuple[int, _WriteBack]:
        """A memfd with the remote file's content (unless truncated), and its write-back."""
        # read-write remotely, so the content can be fetched; appending is done locally
        remote_flags = (flags & ~(os.O_ACCMODE | os.O_APPEND)) | os.O_RDWR
        truncating = bool(flags & os.O_TRUNC)
        opened = self._remote_open(
            remote, remote_flags, filename, 0 if truncating else MAX_FILE_CHUNK
        )
        try:
            fd = _memfd(remote, sealable=False)
            try:
                if not truncating:
                    self._fetch_into(fd, opened, filename)
                os.lseek(fd, 0, os.SEEK_SET)
                if flags & os.O_APPEND:
                    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            self.close_handle(opened.handle)
            raise
        return fd, _WriteBack(self, opened.handle, filename)

    # -- open() ----------------------------------------------------------------------

    def _open(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        file = args[0] if args else kwargs.get("file")
        if type(file) is str:
            mode = args[1] if len(args) > 1 else kwargs.get("mode", "r")
            if type(mode) is str:
                found = (self._reads if mode in _READ_MODES else self._writes).get(file)
                if found is not None and found[0] is LOCAL:
                    return wrapped(*args, **kwargs)  # the fast path: a known local file
        elif type(file) is int:
            if file in self._write_fds:
                return self._open_write_fd(wrapped, args, kwargs)
            return wrapped(*args, **kwargs)
        try:
            file, mode, buffering, encoding, errors, newline, closefd, opener = _open_args(
                *args, **kwargs
            )
            parsed = _parse_mode(mode)
        except (TypeError, ValueError):
            return wrapped(*args, **kwargs)  # the real open() raises the right error
        if opener is not None:
            return wrapped(*args, **kwargs)  # the app opens it its own way
        where = self._where(file, parsed.kind != "r" or parsed.plus)
        if where is None:
            return wrapped(*args, **kwargs)
        if not closefd:
            raise ValueError("Cannot use closefd=False with file name")
        remote = where[1]
        if parsed.kind == "r" and not parsed.plus:
            opened = self._remote_open(remote, os.O_RDONLY, file, MAX_FILE_CHUNK)
            if opened.handle and opened.stat[STAT_FIELDS.index("st_size")] > STREAM_ABOVE:
                reader = _RemoteReader(self, opened, file, remote)
                return _layered(reader, mode, parsed, buffering, encoding, errors, newline)
            fd = self._sealed_copy(remote, opened, file)
            return self._open_memfd(wrapped, fd, file, mode, buffering, encoding, errors, newline)
        flags = (
            os.O_RDWR
            | {
                "r": 0,
                "w": os.O_CREAT | os.O_TRUNC,
                "a": os.O_CREAT | os.O_APPEND,
                "x": os.O_CREAT | os.O_EXCL,
            }[parsed.kind]
        )
        fd, back = self._open_for_writing(remote, flags, file)
        try:
            raw = _WriteBackFile(fd, parsed.kind + ("+" if parsed.plus else ""), back)
        except BaseException:
            os.close(fd)
            self.close_handle(back.handle)
            raise
        return _layered(raw, mode, parsed, buffering, encoding, errors, newline)

    @staticmethod
    def _open_memfd(
        wrapped: Any,
        fd: int,
        file: Any,
        mode: str,
        buffering: int,
        encoding: str | None,
        errors: str | None,
        newline: str | None,
    ) -> Any:
        """The real open() over our memfd: the very objects a local open returns."""
        taken = []

        def opener(_path: Any, _flags: int) -> int:
            taken.append(fd)
            return fd

        try:
            return wrapped(file, mode, buffering, encoding, errors, newline, True, opener)
        except BaseException:
            if not taken:
                os.close(fd)
            raise

    def _open_write_fd(self, wrapped: Any, args: tuple, kwargs: dict) -> Any:
        """open(fd) / os.fdopen of an os.open()ed remote file: the file object writes back."""
        try:
            fd, mode, buffering, encoding, errors, newline, closefd, opener = _open_args(
                *args, **kwargs
            )
            parsed = _parse_mode(mode)
        except (TypeError, ValueError):
            return wrapped(*args, **kwargs)
        if not closefd or opener is not None:
            return wrapped(*args, **kwargs)  # os.close(fd) still writes it back
        back = self._write_fds.pop(fd)
        try:
            raw = _WriteBackFile(fd, parsed.kind + ("+" if parsed.plus else ""), back)
        except BaseException:
            self._write_fds[fd] = back
            raise
        return _layered(raw, mode, parsed, buffering, encoding, errors, newline)

    # -- os.* --------------------------------------------------------------------------

    def _os_open(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        path = args[0] if args else kwargs.get("path")
        if type(path) is str:
            flags = args[1] if len(args) > 1 else kwargs.get("flags", 0)
            if type(flags) is int:
                found = (self._writes if flags & _WRITE_FLAGS else self._reads).get(path)
                if found is not None and found[0] is LOCAL:
                    return wrapped(*args, **kwargs)
        try:
            path, flags, _mode = _bind_os_open(*args, **kwargs)
            write = bool(flags & _WRITE_FLAGS)
        except TypeError:
            return wrapped(*args, **kwargs)
        where = self._where(path, write)
        if where is None:
            return wrapped(*args, **kwargs)
        remote = where[1]
        if flags & os.O_DIRECTORY:
            reply = self.call(
                FileStat(req=0, path=remote, follow_symlinks=True), FileStatResult, path
            )
            kind = _stat_result(reply.stat).st_mode & 0o170000
            # a remote directory cannot be a descriptor here
            raise _os_error(errno.EOPNOTSUPP if kind == 0o040000 else errno.ENOTDIR, path)
        if not write:
            return self.materialise(remote, path)
        fd, back = self._open_for_writing(remote, flags, path)
        self._write_fds[fd] = back
        return fd

    def _close(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        fd = args[0] if args else kwargs.get("fd")
        if type(fd) is not int or (back := self._write_fds.pop(fd, None)) is None:
            return wrapped(*args, **kwargs)
        try:
            back.flush(fd)
        finally:
            wrapped(*args, **kwargs)

    def _stat(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        # the fast path inline: os.path.exists/isfile/isdir call this a lot
        found = self._reads.get(args[0]) if args and type(args[0]) is str else None
        if found is not None and found[0] is LOCAL:
            return wrapped(*args, **kwargs)
        return self._any_stat(wrapped, args, kwargs, None)

    def _lstat(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        found = self._reads.get(args[0]) if args and type(args[0]) is str else None
        if found is not None and found[0] is LOCAL:
            return wrapped(*args, **kwargs)
        return self._any_stat(wrapped, args, kwargs, False)

    def _any_stat(self, wrapped: Any, args: tuple, kwargs: dict, follow: bool | None) -> Any:
        try:
            path, follow_symlinks = _bind_stat(*args, **kwargs)
        except TypeError:
            return wrapped(*args, **kwargs)
        where = self._where(path, False)
        if where is None:
            return wrapped(*args, **kwargs)
        follow = bool(follow_symlinks) if follow is None else follow
        reply = self.call(
            FileStat(req=0, path=where[1], follow_symlinks=follow), FileStatResult, path
        )
        return _stat_result(reply.stat)

    def _access(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        path = args[0] if args else kwargs.get("path")
        if type(path) is str:
            found = self._reads.get(path)
            if found is not None and found[0] is LOCAL:
                return wrapped(*args, **kwargs)
        try:
            path, mode = _bind_access(*args, **kwargs)
            write = bool(mode & os.W_OK)
            where = self._where(path, write)
        except TypeError:
            return wrapped(*args, **kwargs)
        except FileNotFoundError:
            return False
        if where is None:
            return wrapped(*args, **kwargs)
        try:
            self.call(FileAccess(req=0, path=where[1], mode=int(mode)), FileDone, path)
        except OSError:
            return False
        return True

    def _list(self, remote: str, filename: Any) -> list[tuple[bytes, int, int, int]]:
        entries: list[tuple[bytes, int, int, int]] = []
        while True:
            reply = self.call(
                FileListDir(req=0, path=remote, start=len(entries)), FileEntries, filename
            )
            entries.extend(reply.entries)
            if not reply.more or not reply.entries:
                return entries

    def _listdir(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        path = args[0] if args else kwargs.get("path")
        if path is None:
            return wrapped(*args, **kwargs)  # ".", relative: local
        where = self._where(path, False)
        if where is None:
            return wrapped(*args, **kwargs)
        names = [entry[0] for entry in self._list(where[1], path)]
        return names if where[2] else [os.fsdecode(name) for name in names]

    def _scandir(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        path = args[0] if args else kwargs.get("path")
        if path is None:
            return wrapped(*args, **kwargs)
        where = self._where(path, False)
        if where is None:
            return wrapped(*args, **kwargs)
        _, remote, as_bytes = where
        given = os.fspath(path)
        entries = []
        for raw_name, kind, target, inode in self._list(remote, path):
            text = os.fsdecode(raw_name)
            name = raw_name if as_bytes else text
            entries.append(
                _RemoteDirEntry(
                    self,
                    name,
                    os.path.join(given, name),
                    posixpath.join(remote, text),
                    (kind, target, inode),
                )
            )
        return _RemoteScandir(entries)

    def _readlink(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        try:
            path = _bind_path(*args, **kwargs)
        except TypeError:
            return wrapped(*args, **kwargs)
        where = self._where(path, False)
        if where is None:
            return wrapped(*args, **kwargs)
        reply = self.call(FileReadlink(req=0, path=where[1]), FileLink, path)
        return reply.target if where[2] else os.fsdecode(reply.target)

    def _unlink(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        return self._path_op(
            wrapped, args, kwargs, lambda remote, _: FileUnlink(req=0, path=remote)
        )

    def _rmdir(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        return self._path_op(wrapped, args, kwargs, lambda remote, _: FileRmdir(req=0, path=remote))

    def _mkdir(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        try:
            _, mode = _bind_mkdir(*args, **kwargs)
        except TypeError:
            return wrapped(*args, **kwargs)
        return self._path_op(
            wrapped, args, kwargs, lambda remote, _: FileMkdir(req=0, path=remote, mode=int(mode))
        )

    def _path_op(self, wrapped: Any, args: tuple, kwargs: dict, build: Any) -> Any:
        try:
            path = _bind_path(*args, **kwargs)
        except TypeError:
            return wrapped(*args, **kwargs)
        where = self._where(path, True)
        if where is None:
            return wrapped(*args, **kwargs)
        self.call(build(where[1], path), FileDone, path)
        return None

    def _rename(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        try:
            src, dst = _bind_rename(*args, **kwargs)
        except TypeError:
            return wrapped(*args, **kwargs)
        src_where = self._where_or_missing(src)
        dst_where = self._where_or_missing(dst)
        if src_where is None and dst_where is None:
            return wrapped(*args, **kwargs)
        if src_where is NOT_FOUND or dst_where is NOT_FOUND:
            raise _os_error(errno.ENOENT, src, dst)
        if src_where is None or dst_where is None:
            # one side here, the other in the target: as across two file systems
            raise _os_error(errno.EXDEV, src, dst)
        self.call(FileRename(req=0, src=src_where, dst=dst_where), FileDone, src, dst)
        return None

    def _where_or_missing(self, value: Any) -> str | None:
        """The remote path, None when local, NOT_FOUND when the policy hides it."""
        path = _path_of(value)
        if path is None:
            return None
        decision, remote = self.route(path[0], True)
        if decision is LOCAL:
            return None
        return NOT_FOUND if decision is NOT_FOUND else remote

    # -- sqlite3 -----------------------------------------------------------------------

    def _sqlite_connect(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        """A remote database opens read-only from a private copy (C code opens the file)."""
        database = args[0] if args else kwargs.get("database")
        uri = args[7] if len(args) > 7 else kwargs.get("uri", False)
        if uri or database is None:
            return wrapped(*args, **kwargs)
        try:
            where = self._where(database, False)
        except FileNotFoundError:
            raise _sqlite_error() from None
        if where is None:
            return wrapped(*args, **kwargs)
        return self._connect_copy(wrapped, where[1], database, args, kwargs)

    def _connect_copy(
        self, wrapped: Any, remote: str, database: Any, args: tuple, kwargs: dict
    ) -> Any:
        """sqlite3.connect on a private copy of the remote file, unlinked once sqlite has it.

        sqlite resolves symlinks in the path it is given, so `/proc/self/fd/N` of a memfd
        does not work; `immutable=1` means sqlite never opens anything else (no journal,
        no locks), so the copy can go as soon as the connection holds it open.
        """
        import tempfile
        import urllib.parse

        try:
            opened = self._remote_open(remote, os.O_RDONLY, database, MAX_FILE_CHUNK)
        except OSError:
            raise _sqlite_error() from None
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        folder = tempfile.mkdtemp(prefix="mirrord-sqlite-", dir=base)
        copy = os.path.join(folder, posixpath.basename(remote) or "db")
        try:
            out = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                self._fetch_into(out, opened, database)
            finally:
                os.close(out)
                self.close_handle(opened.handle)
            uri = f"file:{urllib.parse.quote(copy)}?mode=ro&immutable=1"
            new_args = list(args)
            if new_args:
                new_args[0] = uri
            else:
                kwargs = {**kwargs, "database": uri}
            if len(new_args) > 7:
                new_args[7] = True
            else:
                kwargs = {**kwargs, "uri": True}
            return wrapped(*new_args, **kwargs)
        finally:
            try:
                os.unlink(copy)
            except OSError:
                pass
            os.rmdir(folder)


def _sendable(path: str) -> bool:
    """Paths the wire can carry (text, no NUL): others stay local and fail there."""
    if "\0" in path:
        return False
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _sqlite_error() -> Exception:
    import sqlite3

    return sqlite3.OperationalError("unable to open database file")
