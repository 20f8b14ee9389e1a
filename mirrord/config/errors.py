"""The one exception type configuration loading raises, and pydantic's errors as one line."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sized
from typing import Any

from pydantic import ValidationError

from mirrord.config.introspect import fields_at
from mirrord.config.merge import ENV, FILE, Origin
from mirrord.config.positions import KeyPath, Locator


class ConfigError(Exception):
    """A configuration problem, rendered as one readable line.

    ``str(err)`` looks like ``mirrord.json:7: feature.network.outgoing.tcp: expected a
    boolean, got "yes"``; the parts are also available as attributes.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.key = key
        parts = []
        if source is not None:
            parts.append(source if line is None else f"{source}:{line}")
        if key:
            parts.append(key)
        parts.append(message)
        # Keep it to one line whatever the inputs contain.
        super().__init__(" ".join(": ".join(parts).split("\n")))


def describe_value(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_MESSAGES = {
    "bool_type": "expected a boolean",
    "bool_parsing": "expected a boolean",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "dict_type": "expected an object",
    "model_type": "expected an object",
    "model_attributes_type": "expected an object",
    "literal_error": "",
    "shape": "",
    "str_or_list": "",
}


def _count(value: Any) -> int:
    return len(value) if isinstance(value, Sized) else 0


def _message(error: Mapping[str, Any], loc: KeyPath) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        names = fields_at(loc[:-1])
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        return "unknown key" + (f' (did you mean "{close[0]}"?)' if close else "")
    if kind == "missing":
        return "required key is missing"
    if kind == "invalid_key":
        return "keys must be strings"
    if kind in ("greater_than_equal", "greater_than"):
        return f"must be at least {ctx.get('ge', ctx.get('gt'))}, got {describe_value(value)}"
    if kind in ("less_than_equal", "less_than"):
        return f"must be at most {ctx.get('le', ctx.get('lt'))}, got {describe_value(value)}"
    if kind == "too_short":
        return f"expected at least {ctx.get('min_length')} items, got {_count(value)}"
    if kind == "too_long":
        return f"expected at most {ctx.get('max_length')} items, got {_count(value)}"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", '"')
        return f"expected one of {expected}, got {describe_value(value)}"
    if kind in _TYPE_MESSAGES:
        base = _TYPE_MESSAGES[kind] or str(error["msg"])
        return f"{base}, got {describe_value(value)}"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _origin_for(loc: KeyPath, origins: dict[KeyPath, Origin]) -> Origin | None:
    best: tuple[int, Origin] | None = None
    for key_path, origin in origins.items():
        if loc[: len(key_path)] == key_path and (best is None or len(key_path) > best[0]):
            best = (len(key_path), origin)
    if best is not None:
        return best[1]
    # The error is about an object as a whole (e.g. a missing key): the latest source wins.
    below = [o for k, o in origins.items() if k[: len(loc)] == loc]
    return max(below, key=lambda o: o.rank, default=None)


def to_config_error(
    err: ValidationError,
    origins: dict[KeyPath, Origin],
    locate: Locator,
) -> ConfigError:
    errors = err.errors(include_url=False)

    def clean(loc: tuple[str | int, ...]) -> KeyPath:
        # Drop the union branch tags ("<object>", "<bool>"...) pydantic puts in locations.
        return tuple(p for p in loc if not (isinstance(p, str) and p.startswith("<")))

    def rank(index: int) -> tuple[int, int, int]:
        # Unknown keys first (a misspelt key often causes the other errors), then the one
        # that comes first in the file, then pydantic's order.
        error = errors[index]
        line = locate(clean(error["loc"]))
        return (error["type"] != "extra_forbidden", line if line is not None else 1 << 30, index)

    first = errors[min(range(len(errors)), key=rank)]
    loc = clean(first["loc"])
    message = _message(first, loc)
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    origin = _origin_for(loc, origins)
    key = ".".join(map(str, loc)) or None
    if origin is None:
        return ConfigError(message, key=key)
    if origin.rank == FILE:
        return ConfigError(message, source=origin.label, line=locate(loc), key=key)
    if origin.rank == ENV:
        return ConfigError(message, source=f"environment variable {origin.label}", key=key)
    return ConfigError(message, source="command-line override", key=key)
