"""Which of the remote pod's environment variables the local app gets (``feature.env``).

Follows mirrord: ``include`` / ``exclude`` are lists of case-sensitive patterns where ``*``
matches any run of characters (including none) and ``?`` exactly one (no other wildcard
syntax), the two are mutually exclusive, a fixed list of variables that only make sense on
the remote machine is never copied.

The layers, lowest first, as mirrord builds them (``fetch_env_vars`` in
``mirrord/cli/src/execution.rs``, then ``exec`` in ``mirrord/cli/src/main.rs``):

1. the local environment;
2. the selected remote variables;
3. the ``env_file`` variables (they replace remote ones, and are not filtered);
4. ``mapping``: each remote or env-file variable whose *name* a regex matches (a search, not
   a full match; the first matching pattern wins) gets that pattern's value;
5. ``override``;
6. ``unset`` removes names from the result, whatever their case (mirrord's layer compares
   lower-cased names).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache

from mirrord.config.resolved import EnvSettings, resolve_env
from mirrord.config.schema import EnvConfig
from mirrord.settings.rust_regex import compile_rust_regex

__all__ = ["DEFAULT_EXCLUDES", "apply_mapping", "matches_any", "select_env", "without_unset"]

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


def apply_mapping(variables: Mapping[str, str], mapping: Mapping[str, str]) -> dict[str, str]:
    """``variables`` with each value whose name matches a ``mapping`` regex replaced.

    mirrord's ``EnvVarsRemapper``: a pattern matches if it is found anywhere in the name
    (anchor it with ``^``/``$`` for more), the replacement is the literal value, and the first
    matching pattern wins (mirrord's order is its hash map's; here it is the file's order).
    """
    patterns = [(compile_rust_regex(pattern), value) for pattern, value in mapping.items()]
    result = dict(variables)
    for name in result:
        for regex, value in patterns:
            if regex.search(name):
                result[name] = value
                break
    return result


def without_unset(env: Mapping[str, str], unset: Iterable[str]) -> dict[str, str]:
    """``env`` without the ``unset`` names, compared case-insensitively (``AWS_PROFILE``
    also removes ``aws_profile``), as mirrord's layer does."""
    names = {name.lower() for name in unset}
    return {key: value for key, value in env.items() if key.lower() not in names}


def select_env(
    remote: Mapping[str, str],
    cfg_env: EnvSettings | EnvConfig | bool | None,
    local: Mapping[str, str] | None = None,
    file_vars: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables to put on top of the local environment (``os.environ | result``).

    ``remote`` is the target's environment, ``cfg_env`` the ``feature.env`` setting in any
    form (``cfg.env`` is the usual argument), ``local`` the local environment and
    ``file_vars`` what ``env_file`` defines (see :mod:`mirrord.config.env_file`).

    * ``include`` given: only matching remote variables; ``exclude`` given: all but the
      matching ones; neither: all. Both: ``ValueError`` (mirrord refuses it too).
    * :data:`DEFAULT_EXCLUDES` are never taken from the remote, except that naming one
      exactly in ``include`` (no wildcard) brings it in: mirrord documents that "including
      these requires specifying them with include".
    * A remote ``MIRRORD_*`` variable never replaces one the local environment already has:
      those configure this run of mirrord.
    * ``file_vars`` replace remote values; then ``mapping`` rewrites remote and file values;
      then ``override`` entries are set and win over everything.

    ``unset`` is not applied here since it also removes local variables: use
    :func:`without_unset` on the final environment.
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
    result.update(file_vars or {})
    if settings.mapping:
        result = apply_mapping(result, settings.mapping)
    result.update(settings.override)
    return result
