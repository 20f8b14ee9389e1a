"""Where a path's call goes: the fs policy's decision per path, remembered.

Runs inside the user's app: standard library and msgpack only.
"""

from __future__ import annotations

import errno
from typing import Any

from mirrord.layer.files.arguments import path_of, sendable
from mirrord.layer.files.remote import RemoteFs, os_error
from mirrord.settings.fs_filter import LOCAL, NOT_FOUND, FsPolicy

#: Decisions remembered per access kind before the cache starts over.
CACHE_LIMIT = 8192

Decision = tuple[str, str]  # (LOCAL | REMOTE | NOT_FOUND, path to use remotely)


class Router:
    """The decisions of one policy, cached by path; the call wrappers build on it.

    The wrappers look up `_reads`/`_writes` themselves first: a known local path costs one
    dict lookup.
    """

    def __init__(self, policy: FsPolicy, fs: RemoteFs) -> None:
        self.policy = policy
        self.fs = fs
        self._reads: dict[str, Decision] = {}
        self._writes: dict[str, Decision] = {}

    def route(self, path: str, write: bool) -> Decision:
        """The policy's decision for `path`, remembered."""
        cache = self._writes if write else self._reads
        found = cache.get(path)
        if found is None:
            found = self.policy.decide(path, write)
            if found[0] is not LOCAL and not sendable(found[1]):
                found = (LOCAL, path)  # the local call reports what is wrong with it
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            cache[path] = found
        return found

    def _decide(self, value: Any, write: bool) -> tuple[str, str, bool] | None:
        """(decision, remote path, given as bytes); None for fds, non-paths, local paths."""
        path = path_of(value)
        if path is None:
            return None
        decision, remote = self.route(path[0], write)
        return None if decision is LOCAL else (decision, remote, path[1])

    def _where(self, value: Any, write: bool) -> tuple[str, str, bool] | None:
        """(decision, remote path, given as bytes) unless the call stays local."""
        found = self._decide(value, write)
        if found is not None and found[0] is NOT_FOUND:
            raise os_error(errno.ENOENT, value)
        return found

    def _where_or_missing(self, value: Any) -> str | None:
        """The remote path, None when local, NOT_FOUND when the policy hides it."""
        found = self._decide(value, True)
        if found is None:
            return None
        return NOT_FOUND if found[0] is NOT_FOUND else found[1]
