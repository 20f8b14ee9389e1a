"""open(), io.open, os.open, os.fdopen and os.close on remote paths.

A remote file read with open() becomes a real FileIO over a sealed memfd (or, above
`STREAM_ABOVE`, a stream fetched on demand); one opened for writing is a memfd written
back when it is closed.

Runs inside the user's app: standard library and msgpack only.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from mirrord.layer.files.arguments import (
    KIND_FLAGS,
    READ_MODES,
    WRITE_FLAGS,
    bind_os_open,
    open_args,
    parse_mode,
)
from mirrord.layer.files.objects import RemoteReader, WriteBackFile, layered
from mirrord.layer.files.remote import WriteBack, os_error, size_of
from mirrord.layer.files.routing import Router
from mirrord.protocol.files import MAX_FILE_CHUNK
from mirrord.settings.fs_filter import LOCAL

#: Remote files bigger than this are streamed by `open()` instead of copied up front.
STREAM_ABOVE = 2 * MAX_FILE_CHUNK


class OpenCalls(Router):
    """The opening wrappers; `_write_fds` are os.open()ed remote files being written."""

    _write_fds: dict[int, WriteBack]

    def _open(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        file = args[0] if args else kwargs.get("file")
        if type(file) is str:
            mode = args[1] if len(args) > 1 else kwargs.get("mode", "r")
            if type(mode) is str:
                found = (self._reads if mode in READ_MODES else self._writes).get(file)
                if found is not None and found[0] is LOCAL:
                    return wrapped(*args, **kwargs)  # the fast path: a known local file
        elif type(file) is int:
            if file in self._write_fds:
                return self._open_write_fd(wrapped, args, kwargs)
            return wrapped(*args, **kwargs)
        try:
            file, mode, buffering, encoding, errors, newline, closefd, opener = open_args(
                *args, **kwargs
            )
            parsed = parse_mode(mode)
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
            opened = self.fs.open(remote, os.O_RDONLY, file, MAX_FILE_CHUNK)
            if opened.handle and size_of(opened) > STREAM_ABOVE:
                reader = RemoteReader(self.fs, opened, file, remote)
                return layered(reader, mode, parsed, buffering, encoding, errors, newline)
            fd = self.fs.sealed_copy(remote, opened, file)
            return self._open_memfd(wrapped, fd, file, mode, buffering, encoding, errors, newline)
        fd, back = self.fs.open_for_writing(remote, KIND_FLAGS[parsed.kind], file)
        try:
            raw = WriteBackFile(fd, parsed.raw, back)
        except BaseException:
            os.close(fd)
            self.fs.close_handle(back.handle)
            raise
        return layered(raw, mode, parsed, buffering, encoding, errors, newline)

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
            fd, mode, buffering, encoding, errors, newline, closefd, opener = open_args(
                *args, **kwargs
            )
            parsed = parse_mode(mode)
        except (TypeError, ValueError):
            return wrapped(*args, **kwargs)
        if not closefd or opener is not None:
            return wrapped(*args, **kwargs)  # os.close(fd) still writes it back
        back = self._write_fds.pop(fd)
        try:
            raw = WriteBackFile(fd, parsed.raw, back)
        except BaseException:
            self._write_fds[fd] = back
            raise
        return layered(raw, mode, parsed, buffering, encoding, errors, newline)

    # -- os.* --------------------------------------------------------------------------

    def _os_open(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        path = args[0] if args else kwargs.get("path")
        if type(path) is str:
            flags = args[1] if len(args) > 1 else kwargs.get("flags", 0)
            if type(flags) is int:
                found = (self._writes if flags & WRITE_FLAGS else self._reads).get(path)
                if found is not None and found[0] is LOCAL:
                    return wrapped(*args, **kwargs)
        try:
            path, flags, _mode = bind_os_open(*args, **kwargs)
            write = bool(flags & WRITE_FLAGS)
        except TypeError:
            return wrapped(*args, **kwargs)
        where = self._where(path, write)
        if where is None:
            return wrapped(*args, **kwargs)
        remote = where[1]
        if flags & os.O_DIRECTORY:
            kind = self.fs.stat(remote, True, path).st_mode & 0o170000
            # a remote directory cannot be a descriptor here
            raise os_error(errno.EOPNOTSUPP if kind == 0o040000 else errno.ENOTDIR, path)
        if not write:
            return self.fs.materialise(remote, path)
        fd, back = self.fs.open_for_writing(remote, flags, path)
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
