"""os.stat, lstat, access, listdir, scandir, readlink and the writes on remote paths.

Runs inside the user's app: standard library and msgpack only.
"""

from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Callable
from typing import Any

from mirrord.layer.files.arguments import bind_access, bind_mkdir, bind_path, bind_rename, bind_stat
from mirrord.layer.files.objects import RemoteDirEntry, RemoteScandir
from mirrord.layer.files.remote import os_error
from mirrord.layer.files.routing import Router
from mirrord.protocol import FileMkdir, FileRename, FileRmdir, FileUnlink
from mirrord.settings.fs_filter import LOCAL, NOT_FOUND


class PathCalls(Router):
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
            path, follow_symlinks = bind_stat(*args, **kwargs)
        except TypeError:
            return wrapped(*args, **kwargs)
        where = self._where(path, False)
        if where is None:
            return wrapped(*args, **kwargs)
        follow = bool(follow_symlinks) if follow is None else follow
        return self.fs.stat(where[1], follow, path)

    def _access(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        path = args[0] if args else kwargs.get("path")
        if type(path) is str:
            found = self._reads.get(path)
            if found is not None and found[0] is LOCAL:
                return wrapped(*args, **kwargs)
        try:
            path, mode = bind_access(*args, **kwargs)
            write = bool(mode & os.W_OK)
            where = self._where(path, write)
        except TypeError:
            return wrapped(*args, **kwargs)
        except FileNotFoundError:
            return False
        if where is None:
            return wrapped(*args, **kwargs)
        return self.fs.access(where[1], int(mode), path)

    def _listdir(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        path = args[0] if args else kwargs.get("path")
        if path is None:
            return wrapped(*args, **kwargs)  # ".", relative: local
        where = self._where(path, False)
        if where is None:
            return wrapped(*args, **kwargs)
        names = [entry[0] for entry in self.fs.list(where[1], path)]
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
        for raw_name, kind, target, inode in self.fs.list(remote, path):
            text = os.fsdecode(raw_name)
            name = raw_name if as_bytes else text
            entries.append(
                RemoteDirEntry(
                    self.fs,
                    name,
                    os.path.join(given, name),
                    posixpath.join(remote, text),
                    (kind, target, inode),
                )
            )
        return RemoteScandir(entries)

    def _readlink(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        def remote(where: tuple[str, str, bool], path: Any) -> Any:
            target = self.fs.readlink(where[1], path)
            return target if where[2] else os.fsdecode(target)

        return self._on_path(wrapped, args, kwargs, False, remote)

    def _unlink(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        return self._path_op(
            wrapped, args, kwargs, lambda remote, _: FileUnlink(req=0, path=remote)
        )

    def _rmdir(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        return self._path_op(wrapped, args, kwargs, lambda remote, _: FileRmdir(req=0, path=remote))

    def _mkdir(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        try:
            _, mode = bind_mkdir(*args, **kwargs)
        except TypeError:
            return wrapped(*args, **kwargs)
        return self._path_op(
            wrapped, args, kwargs, lambda remote, _: FileMkdir(req=0, path=remote, mode=int(mode))
        )

    def _path_op(self, wrapped: Any, args: tuple, kwargs: dict, build: Any) -> Any:
        """A write on one path (unlink, rmdir, mkdir): `build(remote, path)` is its request."""
        return self._on_path(
            wrapped,
            args,
            kwargs,
            True,
            lambda where, path: self.fs.done(build(where[1], path), path),
        )

    def _on_path(
        self, wrapped: Any, args: tuple, kwargs: dict, write: bool, remote: Callable[..., Any]
    ) -> Any:
        """`remote(where, path)` when the call's path argument goes remote, else the call."""
        try:
            path = bind_path(*args, **kwargs)
        except TypeError:
            return wrapped(*args, **kwargs)
        where = self._where(path, write)
        if where is None:
            return wrapped(*args, **kwargs)
        return remote(where, path)

    def _rename(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        try:
            src, dst = bind_rename(*args, **kwargs)
        except TypeError:
            return wrapped(*args, **kwargs)
        src_where = self._where_or_missing(src)
        dst_where = self._where_or_missing(dst)
        if src_where is None and dst_where is None:
            return wrapped(*args, **kwargs)
        if src_where is NOT_FOUND or dst_where is NOT_FOUND:
            raise os_error(errno.ENOENT, src, dst)
        if src_where is None or dst_where is None:
            # one side here, the other in the target: as across two file systems
            raise os_error(errno.EXDEV, src, dst)
        self.fs.done(FileRename(req=0, src=src_where, dst=dst_where), src, dst)
        return None
