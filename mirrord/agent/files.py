"""Remote files: the target's file system, as its processes see it.

The agent runs inside the target's mount namespace, so `/` here is the target's root and
no path (with `..` or symlinks) can reach beyond it. Requests must still name absolute,
NUL-free paths; they are normalised before use. Every blocking call runs in a worker
thread; open files are per client and closed when the client goes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import posixpath
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from mirrord.agent.session import ClientSession, Feature
from mirrord.protocol import (
    FileAccess,
    FileClose,
    FileData,
    FileDone,
    FileEntries,
    FileFstat,
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
)
from mirrord.protocol.files import (
    KIND_DIR,
    KIND_FILE,
    KIND_MISSING,
    KIND_OTHER,
    KIND_SYMLINK,
    MAX_FILE_CHUNK,
    MAX_LISTING_BYTES,
    DirEntry,
)

T = TypeVar("T")

#: Open files one client may hold at once.
MAX_HANDLES = 1024
#: Flags a client may ask for; O_CLOEXEC and O_NOCTTY are always added.
_ALLOWED_FLAGS = os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_APPEND | os.O_NOFOLLOW
_FORCED_FLAGS = os.O_CLOEXEC | os.O_NOCTTY


def check_path(path: Any) -> str:
    """The normalised absolute path, or OSError(EINVAL) for anything else."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise OSError(errno.EINVAL, f"not an absolute path: {path!r:.200}")
    normal = posixpath.normpath(path)
    # normpath keeps a leading "//" (POSIX leaves it implementation-defined)
    return "/" + normal.lstrip("/")


def stat_list(st: os.stat_result) -> list[int]:
    return [
        st.st_mode,
        st.st_ino,
        st.st_dev,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_atime_ns,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_blksize,
        st.st_blocks,
        st.st_rdev,
    ]


def _kind(mode: int) -> int:
    if stat.S_ISREG(mode):
        return KIND_FILE
    if stat.S_ISDIR(mode):
        return KIND_DIR
    if stat.S_ISLNK(mode):
        return KIND_SYMLINK
    return KIND_OTHER


@dataclass
class _Handle:
    fd: int
    path: str
    writable: bool


def _open(path: str, flags: int, mode: int, read_ahead: int) -> tuple[int, os.stat_result, bytes]:
    """Open a regular file; its fd, stat and first `read_ahead` bytes (blocking)."""
    access = flags & os.O_ACCMODE
    # O_NONBLOCK: opening a FIFO must not hang the worker thread; cleared below
    fd = os.open(path, (flags & _ALLOWED_FLAGS) | _FORCED_FLAGS | os.O_NONBLOCK, mode & 0o7777)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EOPNOTSUPP, "mirrord: only regular files can be opened remotely")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        data = b""
        if read_ahead > 0 and access != os.O_WRONLY:
            data = os.pread(fd, min(read_ahead, MAX_FILE_CHUNK), 0)
        return fd, st, data
    except BaseException:
        os.close(fd)
        raise


def _list_dir(path: str, start: int) -> tuple[list[DirEntry], bool]:
    """Entries from index `start` on, as many as fit one reply (blocking)."""
    entries: list[DirEntry] = []
    size = 0
    with os.scandir(os.fsencode(path)) as it:
        for index, entry in enumerate(it):
            if index < start:
                continue
            if size >= MAX_LISTING_BYTES:
                return entries, True
            try:
                kind = _kind(entry.stat(follow_symlinks=False).st_mode)
            except OSError:
                kind = KIND_OTHER
            target = kind
            if kind == KIND_SYMLINK:
                try:
                    target = _kind(entry.stat(follow_symlinks=True).st_mode)
                except OSError:
                    target = KIND_MISSING
            entries.append((entry.name, kind, target, entry.inode()))
            size += len(entry.name) + 32
    return entries, False


class FilesFeature(Feature):
    """File requests of one client, with the files it holds open."""

    handles = (
        FileOpen,
        FileRead,
        FileWrite,
        FileTruncate,
        FileClose,
        FileFstat,
        FileStat,
        FileAccess,
        FileListDir,
        FileReadlink,
        FileUnlink,
        FileMkdir,
        FileRmdir,
        FileRename,
    )

    def __init__(self, session: ClientSession) -> None:
        super().__init__(session)
        self._files: dict[int, _Handle] = {}
        self._next = 1

    async def handle(self, msg: Any) -> None:
        try:
            reply = await self._answer(msg)
        except OSError as exc:
            code = exc.errno or errno.EIO
            await self.session.reply_failure(msg, code, exc.strerror or os.strerror(code))
            return
        await self.session.link.send(reply)

    async def _answer(self, msg: Any) -> Message:
        if isinstance(msg, FileOpen):
            return await self._open(msg)
        if isinstance(msg, FileRead):
            handle = self._handle(msg.handle)
            size = max(0, min(msg.size, MAX_FILE_CHUNK))
            if msg.offset < 0:
                raise OSError(errno.EINVAL, "negative offset")
            data = await _blocking(os.pread, handle.fd, size, msg.offset)
            return FileData(req=msg.req, data=data, eof=len(data) < size)
        if isinstance(msg, FileWrite):
            handle = self._writable(msg.handle)
            if msg.offset < 0 or len(msg.data) > MAX_FILE_CHUNK:
                raise OSError(errno.EINVAL, "bad offset or chunk size")
            written = await _blocking(_pwrite_all, handle.fd, msg.data, msg.offset)
            return FileWritten(req=msg.req, size=written)
        if isinstance(msg, FileTruncate):
            handle = self._writable(msg.handle)
            await _blocking(os.ftruncate, handle.fd, max(0, msg.size))
            return FileDone(req=msg.req)
        if isinstance(msg, FileClose):
            closing = self._files.pop(msg.handle, None)
            if closing is None:
                raise OSError(errno.EBADF, "no such remote file")
            await _blocking(os.close, closing.fd)
            return FileDone(req=msg.req)
        if isinstance(msg, FileFstat):
            st = await _blocking(os.fstat, self._handle(msg.handle).fd)
            return FileStatResult(req=msg.req, stat=stat_list(st))
        if isinstance(msg, FileStat):
            path = check_path(msg.path)
            st = await _blocking(os.stat, path, follow_symlinks=msg.follow_symlinks)
            return FileStatResult(req=msg.req, stat=stat_list(st))
        if isinstance(msg, FileAccess):
            path = check_path(msg.path)
            if not await _blocking(os.access, path, msg.mode & 0o7):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            return FileDone(req=msg.req)
        if isinstance(msg, FileListDir):
            entries, more = await _blocking(_list_dir, check_path(msg.path), max(0, msg.start))
            return FileEntries(req=msg.req, entries=entries, more=more)
        if isinstance(msg, FileReadlink):
            target = await _blocking(os.readlink, os.fsencode(check_path(msg.path)))
            return FileLink(req=msg.req, target=target)
        if isinstance(msg, FileUnlink):
            await _blocking(os.unlink, check_path(msg.path))
        elif isinstance(msg, FileMkdir):
            await _blocking(os.mkdir, check_path(msg.path), msg.mode & 0o7777)
        elif isinstance(msg, FileRmdir):
            await _blocking(os.rmdir, check_path(msg.path))
        elif isinstance(msg, FileRename):
            await _blocking(os.rename, check_path(msg.src), check_path(msg.dst))
        else:  # pragma: no cover - `handles` lists exactly the types above
            raise OSError(errno.ENOSYS, f"unexpected {msg.TAG}")
        return FileDone(req=msg.req)

    async def _open(self, msg: FileOpen) -> Message:
        path = check_path(msg.path)
        if len(self._files) >= MAX_HANDLES:
            raise OSError(errno.EMFILE, "too many remote files open")
        fd, st, data = await _blocking(_open, path, msg.flags, msg.mode, msg.read_ahead)
        access = msg.flags & os.O_ACCMODE
        if access == os.O_RDONLY and len(data) < min(msg.read_ahead, MAX_FILE_CHUNK):
            # the whole file came with the reply: nothing left to hold open
            await _blocking(os.close, fd)
            return FileOpened(req=msg.req, handle=0, stat=stat_list(st), data=data, eof=True)
        handle, self._next = self._next, self._next + 1
        self._files[handle] = _Handle(fd, path, writable=access != os.O_RDONLY)
        return FileOpened(req=msg.req, handle=handle, stat=stat_list(st), data=data, eof=False)

    def _handle(self, handle: int) -> _Handle:
        found = self._files.get(handle)
        if found is None:
            raise OSError(errno.EBADF, "no such remote file")
        return found

    def _writable(self, handle: int) -> _Handle:
        found = self._handle(handle)
        if not found.writable:
            raise OSError(errno.EBADF, "remote file not open for writing")
        return found

    async def aclose(self) -> None:
        files, self._files = self._files, {}
        for handle in files.values():
            try:
                os.close(handle.fd)
            except OSError:
                pass


def _pwrite_all(fd: int, data: bytes, offset: int) -> int:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    return done


async def _blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking file call in a worker thread (never on the event loop)."""
    if kwargs:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))
    return await anyio.to_thread.run_sync(fn, *args)
