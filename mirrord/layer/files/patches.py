"""The file patch family: which calls are wrapped, by the session's fs policy.

Runs inside the user's app: standard library, wrapt and msgpack only.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from mirrord.layer.context import Context
from mirrord.layer.files.opening import OpenCalls
from mirrord.layer.files.paths import PathCalls
from mirrord.layer.files.remote import RemoteFs, WriteBack
from mirrord.layer.files.routing import Router
from mirrord.layer.files.sqlite import SqliteCalls
from mirrord.layer.patching import PatchFamily
from mirrord.protocol.files import MAX_FILE_CHUNK
from mirrord.settings.fs_filter import FsPolicy, python_directories, runtime_local_patterns

#: mirrord's default `feature.fs.readonly_file_buffer`: how much one small read fetches.
DEFAULT_READ_BUFFER = 128_000


class FilePatches(PatchFamily, OpenCalls, PathCalls, SqliteCalls):
    """open/os.open/stat/lstat/access/listdir/scandir/readlink (+ writes) on remote paths."""

    def __init__(self, ctx: Context) -> None:
        PatchFamily.__init__(self)
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
        buffer = fs.readonly_file_buffer or DEFAULT_READ_BUFFER
        Router.__init__(
            self,
            FsPolicy.from_settings(fs, runtime_local=runtime, home=home),
            RemoteFs(ctx.client, max(4096, min(buffer, MAX_FILE_CHUNK))),
        )
        # os.open()ed remote files being written: fd -> where their content goes on close
        self._write_fds: dict[int, WriteBack] = {}

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
        if self.installed:
            self.install_sqlite()
