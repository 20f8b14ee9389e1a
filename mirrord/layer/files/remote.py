"""The target's file system as the layer sees it: requests to the intproxy, and memfds.

`RemoteFs` is the one client of the file requests (open, read, write back, stat, list...):
the patches and the file objects the app holds go through it. A failed request raises the
`OSError` a local call would raise, with the app's own file name.

Runs inside the user's app: standard library and msgpack only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import posixpath
from dataclasses import dataclass
from typing import Any

from mirrord.client.proxy import ProxyClient, ProxyUnavailable
from mirrord.protocol import (
    FileAccess,
    FileClose,
    FileData,
    FileDone,
    FileEntries,
    FileLink,
    FileListDir,
    FileOpen,
    FileOpened,
    FileRead,
    FileReadlink,
    FileStat,
    FileStatResult,
    FileTruncate,
    FileWrite,
    FileWritten,
    Message,
    RequestFailed,
)
from mirrord.protocol.files import MAX_FILE_CHUNK, STAT_FIELDS

#: A directory entry as the agent lists it: (name, kind, target's kind, inode).
Entry = tuple[bytes, int, int, int]

_SEALS = (
    getattr(fcntl, "F_SEAL_SEAL", 1)
    | getattr(fcntl, "F_SEAL_SHRINK", 2)
    | getattr(fcntl, "F_SEAL_GROW", 4)
    | getattr(fcntl, "F_SEAL_WRITE", 8)
)
_F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)


def os_error(code: int, filename: Any, filename2: Any = None) -> OSError:
    """The OSError (its errno subclass) a local call would raise for `filename`."""
    code = code or errno.EIO
    if filename2 is not None:
        return OSError(code, os.strerror(code), filename, None, filename2)
    return OSError(code, os.strerror(code), filename)


def stat_result(values: list[int]) -> os.stat_result:
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


def size_of(opened: FileOpened) -> int:
    return opened.stat[STAT_FIELDS.index("st_size")]


def memfd(name: str, sealable: bool) -> int:
    flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealable else 0)
    return os.memfd_create(f"mirrord:{posixpath.basename(name)[:200]}", flags)


def seal(fd: int) -> None:
    """No more changes to the memfd: what C code reads is the target's file."""
    fcntl.fcntl(fd, _F_ADD_SEALS, _SEALS)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class RemoteFs:
    """File requests to the intproxy, on remote paths (already decided and remapped)."""

    def __init__(self, client: ProxyClient, read_buffer: int) -> None:
        self.client = client
        #: how much one small read of a streamed file fetches
        self.read_buffer = read_buffer

    def call(
        self, msg: Message, expect: type[Message], filename: Any, filename2: Any = None
    ) -> Any:
        """Send a request; its reply, or the OSError a local call would raise."""
        try:
            reply = self.client.request(msg)
        except ProxyUnavailable as exc:
            raise OSError(errno.EIO, f"mirrord: {exc}", filename) from None
        if isinstance(reply, RequestFailed):
            raise os_error(reply.errno, filename, filename2)
        if not isinstance(reply, expect):
            raise OSError(errno.EIO, f"mirrord: unexpected {reply.TAG} reply", filename)
        return reply

    def done(self, msg: Message, filename: Any, filename2: Any = None) -> None:
        """A request answered by FileDone (unlink, mkdir, rename...)."""
        self.call(msg, FileDone, filename, filename2)

    def close_handle(self, handle: int) -> None:
        if handle:
            try:
                self.client.request(FileClose(req=0, handle=handle))
            except OSError:
                pass  # the agent closes it anyway when the session ends

    # -- reading -----------------------------------------------------------------------

    def open(self, remote: str, flags: int, filename: Any, read_ahead: int) -> FileOpened:
        msg = FileOpen(req=0, path=remote, flags=flags, mode=0o666, read_ahead=read_ahead)
        reply: FileOpened = self.call(msg, FileOpened, filename)
        return reply

    def read(self, handle: int, offset: int, size: int, filename: Any) -> FileData:
        reply: FileData = self.call(
            FileRead(req=0, handle=handle, offset=offset, size=size), FileData, filename
        )
        return reply

    def fetch_into(self, fd: int, opened: FileOpened, filename: Any) -> None:
        """Append the rest of a remote file (after its read-ahead) to `fd`."""
        write_all(fd, opened.data)
        offset = len(opened.data)
        if opened.handle and not opened.eof:
            while True:
                reply = self.read(opened.handle, offset, MAX_FILE_CHUNK, filename)
                write_all(fd, reply.data)
                offset += len(reply.data)
                if reply.eof or not reply.data:
                    break

    def materialise(self, remote: str, filename: Any) -> int:
        """A read-only memfd (sealed) with the whole remote file, at offset 0."""
        opened = self.open(remote, os.O_RDONLY, filename, MAX_FILE_CHUNK)
        return self.sealed_copy(remote, opened, filename)

    def sealed_copy(self, remote: str, opened: FileOpened, filename: Any) -> int:
        """Fetch an opened remote file into a sealed memfd at offset 0; closes the handle."""
        try:
            fd = memfd(remote, sealable=True)
            try:
                self.fetch_into(fd, opened, filename)
                seal(fd)
                os.lseek(fd, 0, os.SEEK_SET)
            except BaseException:
                os.close(fd)
                raise
        finally:
            self.close_handle(opened.handle)
        return fd

    # -- writing -----------------------------------------------------------------------

    def open_for_writing(self, remote: str, flags: int, filename: Any) -> tuple[int, WriteBack]:
        """A memfd with the remote file's content (unless truncated), and its write-back."""
        # read-write remotely, so the content can be fetched; appending is done locally
        remote_flags = (flags & ~(os.O_ACCMODE | os.O_APPEND)) | os.O_RDWR
        truncating = bool(flags & os.O_TRUNC)
        opened = self.open(remote, remote_flags, filename, 0 if truncating else MAX_FILE_CHUNK)
        try:
            fd = memfd(remote, sealable=False)
            try:
                if not truncating:
                    self.fetch_into(fd, opened, filename)
                os.lseek(fd, 0, os.SEEK_SET)
                if flags & os.O_APPEND:
                    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            self.close_handle(opened.handle)
            raise
        return fd, WriteBack(self, opened.handle, filename)

    # -- metadata ----------------------------------------------------------------------

    def stat(self, remote: str, follow_symlinks: bool, filename: Any) -> os.stat_result:
        msg = FileStat(req=0, path=remote, follow_symlinks=follow_symlinks)
        return stat_result(self.call(msg, FileStatResult, filename).stat)

    def access(self, remote: str, mode: int, filename: Any) -> bool:
        try:
            self.done(FileAccess(req=0, path=remote, mode=mode), filename)
        except OSError:
            return False
        return True

    def list(self, remote: str, filename: Any) -> list[Entry]:
        """Every entry of a remote directory (the agent pages long listings)."""
        entries: list[Entry] = []
        while True:
            reply = self.call(
                FileListDir(req=0, path=remote, start=len(entries)), FileEntries, filename
            )
            entries.extend(reply.entries)
            if not reply.more or not reply.entries:
                return entries

    def readlink(self, remote: str, filename: Any) -> bytes:
        target: bytes = self.call(FileReadlink(req=0, path=remote), FileLink, filename).target
        return target


@dataclass
class WriteBack:
    """A remote file open for writing: its content lives in a memfd until close."""

    fs: RemoteFs
    handle: int
    filename: Any

    def flush(self, fd: int) -> None:
        """The whole content back to the target, its size, then close the remote file."""
        try:
            offset = 0
            while chunk := os.pread(fd, MAX_FILE_CHUNK, offset):
                msg = FileWrite(req=0, handle=self.handle, offset=offset, data=chunk)
                self.fs.call(msg, FileWritten, self.filename)
                offset += len(chunk)
            self.fs.done(FileTruncate(req=0, handle=self.handle, size=offset), self.filename)
        finally:
            self.fs.close_handle(self.handle)
