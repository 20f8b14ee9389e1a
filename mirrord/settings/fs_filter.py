"""Which paths the app reads from the target, which stay local, which do not exist.

mirrord's `feature.fs` policy (``ensure_remote`` in ``mirrord/layer/src/file/ops.rs`` and
``mirrord/layer-lib/src/file/``): the mode (``local``, ``localwithoverrides``, ``read``,
``write``), the user's case-insensitive regex lists (``not_found``, ``read_write``,
``read_only``, ``local``), ``mapping`` (path rewriting first), then mirrord's default lists,
adapted to a Python process (its interpreter, ``sys.path`` and script directory are local).

Runs inside the user's app: standard library only.
"""

from __future__ import annotations

import os
import posixpath
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mirrord.settings.contract import FS_MODES, FsSettings
from mirrord.settings.rust_regex import compile_rust_regex, translate

LOCAL = "local"
REMOTE = "remote"
NOT_FOUND = "not_found"

MODES = FS_MODES
DEFAULT_MODE = FsSettings.mode

#: mirrord's read_local_by_default.rs (unix): local in every mode unless a user list says
#: otherwise. The macOS-only entries are left out.
READ_LOCAL_BY_DEFAULT: tuple[str, ...] = (
    r".\.so$",
    r".\.sh$",
    r".\.rb$",
    r".\.d$",
    r".\.pyc$",
    r".\.py$",
    r".\.jar$",
    r".\.class$",
    r".\.js$",
    r".\.pth$",
    r".\.plist$",
    r"venv\.cfg$",
    r"^/proc(/|$)",
    r"^/sys(/|$)",
    r"^/lib(/|$)",
    r"^/etc(/|$)",
    r"^/usr(/|$)",
    r"^/home(/|$)",
    r"^/bin(/|$)",
    r"^/sbin(/|$)",
    r"^/dev(/|$)",
    r"^/opt(/|$)",
    r"^/tmp(/|$)",
    r"^/var/tmp(/|$)",
    r"^/var/db/timezone/zoneinfo(/|$)",
    r"^/snap(/|$)",
    r"^/run(/|$)",
    r"^/selinux(/|$)",
    r"^/nix(/|$)",
    r".\.asdf/.",  # mirrord: ".+\.asdf/.+" (the same matches, no backtracking)
    r"^/home/iojs(/|$)",
    r"^/home/runner(/|$)",
    r"clr-.*-pipe-",
    r"\.pdb$",
    r"\.dll$",
    r"(^|/)jvm\.cfg$",  # mirrord: ".*(^|/)jvm\.cfg$"
    r"/package\.json$",
    r"/\.yarnrc$",
    r"/\.yarnrc.yml$",
    r"/\.yarnrc.json$",
    r"/node_modules",
    r"/\.tool-versions$",  # mirrord: ".*/\.tool-versions$"
    "^/Program Files",
    "^/$",
    # Python's own (not in mirrord's list): extension modules, stubs and metadata that
    # importers and tools open by path
    r"\.pyi$",
    r"\.pyd$",
    r"\.egg-link$",
    r"(^|/)__pycache__(/|$)",
)

#: mirrord's read_remote_by_default.rs: read from the target even where the default local
#: list would keep them local (DNS files, the CA bundle).
READ_REMOTE_BY_DEFAULT: tuple[str, ...] = (
    r"^/etc/resolv.conf$",
    r"^/etc/hosts$",
    r"^/etc/hostname$",
    r"^/etc/ssl/certs(/|$)",
)

#: mirrord's not_found_by_default.rs: cloud credentials under $HOME are neither the local
#: user's (they would act as the developer) nor read from the target.
NOT_FOUND_BY_DEFAULT: tuple[str, ...] = (r"\.config/gcloud", r"\.kube", r"\.azure")


# ------------------------------------------- Rust regex syntax: mirrord/rust_regex.py


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Case-insensitive, as mirrord builds every fs regex; `re.error` if invalid."""
    return compile_rust_regex(pattern, re.IGNORECASE)


_REPLACEMENT = re.compile(r"\$(\$|\{([^}]*)\}|([A-Za-z0-9_]+))")


def translate_replacement(value: str) -> str:
    """Rust `Regex::replace` syntax (`$1`, `${name}`, `$$`) as an `re.sub` template."""

    def group(m: re.Match[str]) -> str:
        if m.group(1) == "$":
            return "$"
        name = m.group(2) if m.group(2) is not None else m.group(3)
        return f"\\g<{name}>"

    parts = []
    last = 0
    for m in _REPLACEMENT.finditer(value):
        parts.append(value[last : m.start()].replace("\\", "\\\\"))
        parts.append(group(m))
        last = m.end()
    parts.append(value[last:].replace("\\", "\\\\"))
    return "".join(parts)


class RegexSet:
    """Rust's `RegexSet::is_match`: does any pattern match anywhere in the text."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        compiled = [compile_pattern(p) for p in self.patterns]  # raises on a bad pattern
        self._searches: list[re.Pattern[str]] = []
        # One alternation is one scan of the path instead of one per pattern. Patterns that
        # start with "^" go in their own: re then tries them at position 0 only, where a
        # mixed alternation is tried at every position of the path.
        anchored = [p for p in self.patterns if p.startswith("^")]
        floating = [p for p in self.patterns if not p.startswith("^")]
        for group in (anchored, floating):
            if not group:
                continue
            try:
                self._searches.append(
                    re.compile("|".join(f"(?:{translate(p)})" for p in group), re.IGNORECASE)
                )
            except re.error:  # e.g. duplicate group names, or backreferences renumbered
                self._searches = compiled
                return

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def is_match(self, text: str) -> bool:
        # a plain loop: cheaper than any() over a generator on this hot path
        for pattern in self._searches:  # noqa: SIM110
            if pattern.search(text) is not None:
                return True
        return False


def runtime_local_patterns(
    *,
    cwd: str | None,
    home: str | None,
    tmpdir: str,
    executable: str | None,
    directories: Iterable[str] = (),
) -> list[str]:
    """The parts of mirrord's default local list that depend on this process.

    mirrord: the temp dir, the working directory (unless `/`), the executable, hidden files
    in $HOME. Added for Python: `directories` (the interpreter's prefixes, every `sys.path`
    entry, the script's directory, the session's own files).
    """
    patterns = [f"^{re.escape(tmpdir)}"]
    if cwd and cwd != "/":
        patterns.append(f"^{re.escape(cwd.rstrip('/'))}(/|$)")
    if executable:
        patterns.append(f"{re.escape(executable)}$")
    if home and home.rstrip("/"):
        patterns.append(f"^{re.escape(home.rstrip('/'))}/\\.")
    seen = set()
    for directory in directories:
        directory = posixpath.normpath(directory) if directory else ""
        # "/" would make every path local; relative entries mean the working directory
        if not directory.startswith("/") or directory == "/" or directory in seen:
            continue
        seen.add(directory)
        patterns.append(f"^{re.escape(directory)}(/|$)")
    return patterns


def python_directories(argv: Sequence[str] | None = None) -> list[str]:
    """Where this interpreter's own code lives: prefixes, `sys.path`, the script's folder."""
    dirs = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    dirs += [p for p in sys.path if isinstance(p, str)]
    argv = sys.argv if argv is None else argv
    script = argv[0] if argv else ""
    if script and script not in ("-c", "-m", "-") and os.path.isfile(script):
        dirs.append(os.path.dirname(os.path.abspath(script)))
    return dirs


@dataclass
class FsPolicy:
    """mirrord's file filter: `decide(path, write)` is LOCAL, REMOTE or NOT_FOUND."""

    mode: str = DEFAULT_MODE
    read_write: RegexSet = field(default_factory=lambda: RegexSet(()))
    read_only: RegexSet = field(default_factory=lambda: RegexSet(()))
    local: RegexSet = field(default_factory=lambda: RegexSet(()))
    not_found: RegexSet = field(default_factory=lambda: RegexSet(()))
    default_local: RegexSet = field(default_factory=lambda: RegexSet(READ_LOCAL_BY_DEFAULT))
    default_remote_ro: RegexSet = field(default_factory=lambda: RegexSet(READ_REMOTE_BY_DEFAULT))
    default_not_found: RegexSet = field(default_factory=lambda: RegexSet(()))
    mapping: list[tuple[re.Pattern[str], str]] = field(default_factory=list)

    @classmethod
    def from_settings(
        cls,
        fs: FsSettings | Mapping[str, Any] | None,
        *,
        runtime_local: Iterable[str] = (),
        home: str | None = None,
    ) -> FsPolicy:
        """The policy of the layer's `fs` settings (the contract's, or its JSON object).

        `runtime_local`: extra default-local patterns (`runtime_local_patterns`); `home`:
        where the default not-found cloud credentials live.
        """
        if not isinstance(fs, FsSettings):
            fs = FsSettings.from_dict(dict(fs or {}))
        home_dir = (home or "").rstrip("/")
        not_found_defaults = (
            [f"^{re.escape(home_dir)}/{p}" for p in NOT_FOUND_BY_DEFAULT] if home_dir else []
        )
        mapping = [
            (compile_pattern(pattern), translate_replacement(value))
            for pattern, value in fs.mapping.items()
        ]
        return cls(
            mode=fs.mode,
            read_write=RegexSet(fs.read_write),
            read_only=RegexSet(fs.read_only),
            local=RegexSet(fs.local),
            not_found=RegexSet(fs.not_found),
            default_local=RegexSet([*READ_LOCAL_BY_DEFAULT, *runtime_local]),
            default_remote_ro=RegexSet(READ_REMOTE_BY_DEFAULT),
            default_not_found=RegexSet(not_found_defaults),
            mapping=mapping,
        )

    @property
    def may_write(self) -> bool:
        """Can any write go remote (write mode, or read_write patterns outside local mode)?"""
        return self.mode == "write" or (self.mode != "local" and bool(self.read_write))

    def remap(self, path: str) -> str:
        """The first matching `mapping` entry rewrites the path (Rust's `replace`: once)."""
        for pattern, template in self.mapping:
            if pattern.search(path):
                return pattern.sub(template, path, count=1)
        return path

    def _category(self, path: str) -> str | None:
        """mirrord's `FileFilter::check` for relative paths: only NOT_FOUND matters."""
        if self.not_found.is_match(path):
            return NOT_FOUND
        if self.read_write.is_match(path) or self.read_only.is_match(path):
            return REMOTE
        if self.local.is_match(path):
            return LOCAL
        if self.default_not_found.is_match(path):
            return NOT_FOUND
        return None

    def decide(self, path: str, write: bool) -> tuple[str, str]:
        """(decision, the path to use remotely: normalised and remapped)."""
        if self.mode == "local":
            return LOCAL, path
        if not path.startswith("/"):
            # mirrord leaves relative paths local (unless they are in a not-found list)
            if self._category(path) == NOT_FOUND:
                return NOT_FOUND, path
            return LOCAL, path
        # normalised first, so that "/usr/../srv/x" is not local by the "^/usr" rule
        path = self.remap(posixpath.normpath(path))
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        if self.not_found.is_match(path):
            return NOT_FOUND, path
        if self.read_write.is_match(path):
            return REMOTE, path
        if self.read_only.is_match(path):
            return (LOCAL if write else REMOTE), path
        if self.local.is_match(path):
            return LOCAL, path
        if self.default_not_found.is_match(path):
            return NOT_FOUND, path
        if not write and self.default_remote_ro.is_match(path):
            return REMOTE, path
        if self.default_local.is_match(path):
            return LOCAL, path
        if self.mode == "localwithoverrides":
            return LOCAL, path
        if self.mode == "write":
            return REMOTE, path
        # read mode: reads remote, writes local
        return (LOCAL if write else REMOTE), path
