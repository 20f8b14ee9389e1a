"""mirrord's HTTP filter (``feature.network.incoming.http_filter``): which stolen requests go to
the developer's app.

Semantics follow mirrord (config ``mirrord/config/src/feature/network/incoming/http_filter.rs``,
agent ``mirrord/agent/src/http/filter.rs``):

- every regex is case-insensitive and searched anywhere in its subject (not anchored);
- ``header_filter``/``header``: matched against each header as ``name: value`` (name lowercased,
  as hyper prints it; a header whose value is not visible ASCII is skipped); any header matching
  is enough;
- ``path_filter``/``path``: matched against the path without the query, then against
  path+query; either one matching is enough;
- ``method_filter``/``method``: the method, compared case-insensitively;
- ``all_of``/``any_of``: non-empty lists of ``{"header"|"path"|"method": ...}``;
- only one kind may be set at the top level (combine with ``all_of``/``any_of``);
- ``ports``: the filter applies only to these ports (a number or a list); absent means every
  stolen port. Other ports are stolen whole.

``body_filter`` and ``header_filter_jq`` are mirrord features this agent does not implement: they
are refused with a ValueError rather than silently matching nothing.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["HttpFilter"]

_TOP_LEVEL_KINDS = ("header_filter", "path_filter", "method_filter", "all_of", "any_of")
_UNSUPPORTED = ("body_filter", "header_filter_jq")
_KNOWN_KEYS = frozenset((*_TOP_LEVEL_KINDS, *_UNSUPPORTED, "ports"))
_INNER_KINDS = ("header", "path", "method")

# RFC 9110 token: what a method may be made of.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Rust's regex accepts `(?<name>...)` for named groups; Python 3.11 only `(?P<name>...)`.
_RUST_NAMED_GROUP = re.compile(r"(?<!\\)\(\?<(?=[A-Za-z_])")
# hyper's HeaderValue::to_str: visible ASCII and tab, else the header is skipped.
_VISIBLE_ASCII = re.compile(r"[\t\x20-\x7e]*")


@dataclass
class _Request:
    """What a filter looks at; the `name: value` lines are built once, on first use."""

    method: str
    path: str
    headers: Sequence[tuple[str, str]]
    _lines: list[str] | None = field(default=None, repr=False)

    def header_lines(self) -> list[str]:
        if self._lines is None:
            self._lines = [
                f"{name.lower()}: {value}"
                for name, value in self.headers
                if _VISIBLE_ASCII.fullmatch(value)
            ]
        return self._lines

    def path_variants(self) -> tuple[str, ...]:
        """(path, path+query) as hyper's `uri.path()` and `uri.path_and_query()` give them."""
        target = self.path
        if not target.startswith("/") and "://" in target:  # absolute-form request target
            parts = urlsplit(target)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        path, sep, _query = target.partition("?")
        return (path, target) if sep else (path,)


class _Rule:
    def matches(self, request: _Request) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class _Header(_Rule):
    regex: re.Pattern[str]

    def matches(self, request: _Request) -> bool:
        return any(self.regex.search(line) for line in request.header_lines())

    def describe(self) -> str:
        return f"header={self.regex.pattern}"


@dataclass(frozen=True)
class _Path(_Rule):
    regex: re.Pattern[str]

    def matches(self, request: _Request) -> bool:
        return any(self.regex.search(variant) for variant in request.path_variants())

    def describe(self) -> str:
        return f"path={self.regex.pattern}"


@dataclass(frozen=True)
class _Method(_Rule):
    method: str  # upper case

    def matches(self, request: _Request) -> bool:
        return request.method.upper() == self.method

    def describe(self) -> str:
        return f"method={self.method}"


@dataclass(frozen=True)
class _Composite(_Rule):
    all: bool
    rules: tuple[_Rule, ...]

    def matches(self, request: _Request) -> bool:
        if self.all:
            return all(rule.matches(request) for rule in self.rules)
        return any(rule.matches(request) for rule in self.rules)

    def describe(self) -> str:
        inner = ", ".join(f"({rule.describe()})" for rule in self.rules)
        return f"{'all' if self.all else 'any'} of {inner}"


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{where}: HTTP filter cannot be an empty string")
    return value


def _compile(pattern: Any, where: str) -> re.Pattern[str]:
    pattern = _string(pattern, where)
    try:
        with warnings.catch_warnings():  # "possible nested set": a user's regex, not our bug
            warnings.simplefilter("ignore", FutureWarning)
            return re.compile(_RUST_NAMED_GROUP.sub("(?P<", pattern), re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"{where}: invalid regex {pattern!r}: {exc}") from None


def _method(value: Any, where: str) -> _Method:
    value = _string(value, where)
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"{where}: {value!r} is not an HTTP method")
    return _Method(value.upper())


def _inner(entry: Any, where: str) -> _Rule:
    if not isinstance(entry, Mapping):
        raise ValueError(
            f'{where}: expected an object like {{"header": ...}}, {{"path": ...}} '
            f'or {{"method": ...}}'
        )
    keys = set(entry)
    if keys & {"body", "query", "matches"}:
        raise ValueError(f"{where}: body and jq filters are not supported by this agent")
    if len(keys) != 1 or not keys <= set(_INNER_KINDS):
        raise ValueError(
            f"{where}: expected exactly one of 'header', 'path', 'method', got {sorted(keys)}"
        )
    (kind,) = keys
    if kind == "header":
        return _Header(_compile(entry[kind], f"{where}.header"))
    if kind == "path":
        return _Path(_compile(entry[kind], f"{where}.path"))
    return _method(entry[kind], f"{where}.method")


def _composite(entries: Any, all_: bool, where: str) -> _Composite:
    if isinstance(entries, str | bytes) or not isinstance(entries, Iterable):
        raise ValueError(f"{where}: expected a list of filters")
    rules = tuple(_inner(entry, f"{where}[{i}]") for i, entry in enumerate(entries))
    if not rules:
        raise ValueError(f"{where}: a composite HTTP filter cannot be empty")
    return _Composite(all_, rules)


def _ports(value: Any, where: str) -> frozenset[int] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, int) else value
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise ValueError(f"{where}: expected a port number or a list of port numbers")
    ports = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= 65535:
            raise ValueError(f"{where}: {item!r} is not a port number (0-65535)")
        ports.add(item)
    return frozenset(ports)


class HttpFilter:
    """A compiled ``http_filter``; build it with :meth:`from_config`."""

    __slots__ = ("_ports", "_rule")

    def __init__(self, rule: _Rule, ports: frozenset[int] | None = None) -> None:
        self._rule = rule
        self._ports = ports

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> HttpFilter:
        """From the ``feature.network.incoming.http_filter`` object (keys as in mirrord).

        Raises ValueError with a one-line message naming the offending key.
        """
        if not isinstance(cfg, Mapping):
            raise ValueError("http_filter: expected an object")
        unknown = sorted(str(key) for key in cfg if key not in _KNOWN_KEYS)
        if unknown:
            raise ValueError(f"http_filter: unknown key {unknown[0]!r}")
        for key in _UNSUPPORTED:
            if cfg.get(key) is not None:
                raise ValueError(f"http_filter.{key}: not supported by this agent")
        kinds = [key for key in _TOP_LEVEL_KINDS if cfg.get(key) is not None]
        if not kinds:
            raise ValueError(
                "http_filter: no filter set (header_filter, path_filter, method_filter, "
                "all_of or any_of)"
            )
        if len(kinds) > 1:
            raise ValueError(
                f"http_filter: {' and '.join(kinds)} are set; use only one kind of filter, "
                "or combine them with 'all_of'/'any_of'"
            )
        (kind,) = kinds
        value = cfg[kind]
        where = f"http_filter.{kind}"
        rule: _Rule
        if kind == "header_filter":
            rule = _Header(_compile(value, where))
        elif kind == "path_filter":
            rule = _Path(_compile(value, where))
        elif kind == "method_filter":
            rule = _method(value, where)
        else:
            rule = _composite(value, kind == "all_of", where)
        return cls(rule, _ports(cfg.get("ports"), "http_filter.ports"))

    @property
    def ports(self) -> frozenset[int] | None:
        """The ports the filter applies to; None for every port."""
        return self._ports

    def applies_to(self, port: int) -> bool:
        """Whether requests to `port` are filtered (else the port's traffic is stolen whole)."""
        return self._ports is None or port in self._ports

    def matches(self, method: str, path: str, headers: Sequence[tuple[str, str]]) -> bool:
        """Whether this request goes to the developer's app.

        `path` is the request target (``/path?query``; an absolute-form URL is reduced to its
        path and query); `headers` are (name, value) pairs in the order received.
        """
        return self._rule.matches(_Request(method, path, headers))

    def __repr__(self) -> str:
        ports = "all" if self._ports is None else sorted(self._ports)
        return f"HttpFilter({self._rule.describe()}, ports={ports})"
