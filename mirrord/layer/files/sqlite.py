"""sqlite3.connect on a remote database: a private read-only copy (C code opens the file).

Patched when (if) the app imports sqlite3. Runs inside the user's app: standard library,
wrapt and msgpack only.
"""

from __future__ import annotations

import os
import posixpath
import sys
from typing import Any

import wrapt

from mirrord.layer.files.routing import Router
from mirrord.protocol.files import MAX_FILE_CHUNK


class SqliteCalls(Router):
    #: the patch family's undo list: uninstalling undoes sqlite's wrappers too
    _undo: list[tuple[Any, str, Any]]
    _sqlite_hook = False

    def install_sqlite(self) -> None:
        """Patch sqlite3 now if it is imported, else when (if) the app imports it."""
        if not self._sqlite_hook:
            # a post-import hook cannot be removed: register it once, it checks _undo
            wrapt.register_post_import_hook(self._patch_sqlite, "sqlite3")
            self._sqlite_hook = True
        elif "sqlite3" in sys.modules:  # installed again after an uninstall
            self._patch_sqlite(sys.modules["sqlite3"])

    def _patch_sqlite(self, module: Any) -> None:
        if not self._undo:
            return  # the family is not installed
        for owner in (module, getattr(module, "dbapi2", None)):
            if owner is None or isinstance(owner.__dict__.get("connect"), wrapt.ObjectProxy):
                continue
            previous = owner.__dict__.get("connect")
            wrapt.wrap_function_wrapper(owner, "connect", self._sqlite_connect)
            self._undo.append((owner, "connect", previous))

    # -- deciding ------------------------------------------------------------------

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
            opened = self.fs.open(remote, os.O_RDONLY, database, MAX_FILE_CHUNK)
        except OSError:
            raise _sqlite_error() from None
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        folder = tempfile.mkdtemp(prefix="mirrord-sqlite-", dir=base)
        copy = os.path.join(folder, posixpath.basename(remote) or "db")
        try:
            out = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                self.fs.fetch_into(out, opened, database)
            finally:
                os.close(out)
                self.fs.close_handle(opened.handle)
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


def _sqlite_error() -> Exception:
    import sqlite3

    return sqlite3.OperationalError("unable to open database file")
