"""Which of the remote pod's environment variables the local app gets (``feature.env``).

Follows mirrord: ``include`` / ``exclude`` are lists of case-sensitive patterns where ``*``
matches any run of characters (including none) and ``?`` exactly one (no other wildcard
syntax), the two are mutually exclusive, a fixed list of variables that only make sense on
the remote machine is never copied, and ``override`` wins over everything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache

from mirrord.config.model import EnvConfig, EnvSettings, resolve_env

__all__ = ["DEFAULT_EXCLUDES", "matches_any", "select_env"]

# mirrord's agent always filters these out (mirrord/agent/src/env.rs, EnvFilter::new): they
# describe the remote machine's toolchain and paths and would break the local process.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    "BUNDLER_ORIG_BUNDLER_ORIG_MANPATH",
    "BUNDLER_ORIG_BUNDLER_VERSION",
    "BUNDLER_ORIG_BUNDLE_BIN_PATH",
    "BUNDLER_ORIG_BUNDLE_GEMFILE",
    "BUNDLER_ORIG_GEM_HOME",
    "BUNDLER_ORIG_MANPATH",
    "BUNDLER_ORIG_PATH",
    "BUNDLER_ORIG_RB_USER_INSTALL",
    "BUNDLER_ORIG_RUBYLIB",
    "BUNDLER_ORIG_RUBYOPT",
    "BUNDLER_VERSION",
    "BUNDLE_APP_CONFIG",
    "BUNDLE_BIN_PATH",
    "BUNDLE_FORCE_RUBY_PLATFORM",
    "BUNDLE_GEMFILE",
    "BUNDLE_GEM_PATH",
    "BUNDLE_PATH",
    "BUNDLE_WITHOUT",
    "CATALINA_HOME",
    "CLASSPATH",
    "DOTNET_EnableDiagnostics",
    "DOTNET_STARTUP_HOOKS",
    "GEM_HOME",
    "GEM_PATH",
    "GOPATH",
    "GOMODCACHE",
    "HOME",
    "HOMEPATH",
    "JAVA_EXE",
    "JAVA_HOME",
    "JAVA_TOOL_OPTIONS",
    "PATH",
    "PWD",
    "PYTHONPATH",
    "RUBYLIB",
    "RUBYOPT",
    "MIRRORD_LOG",
    "RUST_LOG",
    "_JAVA_OPTIONS",
)
_DEFAULT_EXCLUDE_SET = frozenset(DEFAULT_EXCLUDES)


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    # Only * and ? are special (mirrord uses the wildmatch crate); "[" etc. are literal,
    # which is why fnmatch is not used.
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL)


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """True if ``name`` matches one of the ``*``/``?`` glob ``patterns`` (case-sensitive)."""
    return any(_compile(p).fullmatch(name) is not None for p in patterns)


def _is_literal(pattern: str) -> bool:
    return "*" not in pattern and "?" not in pattern


def select_env(
    remote: Mapping[str, str],
    cfg_env: EnvSettings | EnvConfig | bool | None,
    local: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables to put on top of the local environment (``os.environ | result``).

    ``remote`` is the target's environment, ``cfg_env`` the ``feature.env`` setting in any
    form (``cfg.env`` is the usual argument), ``local`` the local environment.

    * ``include`` given: only matching remote variables; ``exclude`` given: all but the
      matching ones; neither: all. Both: ``ValueError`` (mirrord refuses it too).
    * :data:`DEFAULT_EXCLUDES` are never taken from the remote, except that naming one
      exactly in ``include`` (no wildcard) brings it in: mirrord documents that "including
      these requires specifying them with include".
    * A remote ``MIRRORD_*`` variable never replaces one the local environment already has:
      those configure this run of mirrord.
    * ``override`` entries are always set and win over remote values.
    """
    settings = resolve_env(cfg_env)
    if settings.include is not None and settings.exclude is not None:
        raise ValueError("feature.env: cannot use both include and exclude")
    include = ["*"] if settings.include is None else list(settings.include)
    exclude = list(settings.exclude or [])
    named = {p for p in include if _is_literal(p)}
    local = local or {}

    result: dict[str, str] = {}
    for name, value in remote.items():
        if matches_any(name, exclude):
            continue
        if name in _DEFAULT_EXCLUDE_SET and name not in named:
            continue
        if name.startswith("MIRRORD_") and name in local:
            continue
        if name in named or matches_any(name, include):
            result[name] = value
    result.update(settings.override)
    return result
