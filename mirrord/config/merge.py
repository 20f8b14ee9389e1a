"""Merging the config's sources: file < ``MIRRORD_*`` variables < overrides, key by key.

Each key remembers which source set it (:class:`Origin`), so an error names the file and
line, the variable or the override it came from.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mirrord.config.positions import KeyPath

# A string here is shorthand for the section's "mode" key.
MODE_SECTIONS: tuple[KeyPath, ...] = (("feature", "fs"), ("feature", "network", "incoming"))

# Values that are replaced as a whole even when they are objects (a target path object).
_ATOMIC: tuple[KeyPath, ...] = (("target", "path"),)

FILE, ENV, OVERRIDE = 0, 1, 2


@dataclass(frozen=True)
class Origin:
    rank: int  # FILE < ENV < OVERRIDE
    label: str  # file name, variable name or override key


def split_key(dotted: str) -> list[str]:
    return dotted.split(".")


def plain(value: Any) -> Any:
    """Deep copy of an override value with tuples/sets turned into lists (as JSON would be)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    return copy.deepcopy(value)


def tree_at(path: list[str], value: Any) -> dict[str, Any]:
    tree: Any = value
    for part in reversed(path):
        tree = {part: tree}
    result: dict[str, Any] = tree
    return result


# ------------------------------------------------------------------------------ merging


def _normalise_target(tree: dict[str, Any]) -> None:
    # "target": "pod/x" and "target": {"pod": "x"} both mean {"path": ...}; merging an
    # override of target.namespace (or of the path) into them then keeps the other half.
    target = tree.get("target")
    if isinstance(target, str) or (
        isinstance(target, dict) and target and not set(target) <= {"path", "namespace"}
    ):
        tree["target"] = {"path": target}


def add_layer(
    merged: dict[str, Any],
    origins: dict[KeyPath, Origin],
    layers: list[dict[str, Any]],
    tree: dict[str, Any],
    origin: Origin,
) -> None:
    _normalise_target(tree)
    layers.append(tree)
    _merge(merged, copy.deepcopy(tree), (), origins, origin)


def _expand(path: KeyPath, value: Any) -> dict[str, Any] | None:
    """The object form of a scalar section value, so that sub-keys can be merged into it.

    ``None`` means there is no sensible object form and the new value replaces the old.
    """
    if isinstance(value, bool):
        if path == ("feature", "env"):
            # Disabled env is "exclude everything" in mirrord.
            return {} if value else {"exclude": ["*"]}
        if path == ("feature", "network"):
            return {} if value else {"incoming": False, "outgoing": False, "dns": False}
        if path == ("feature", "network", "outgoing"):
            return {} if value else {"tcp": False, "udp": False}
        if path == ("feature", "network", "dns"):
            return {} if value else {"enabled": False}
        if path == ("feature", "network", "incoming"):
            return {} if value else {"mode": "off"}
        if path == ("feature", "fs"):
            return {} if value else {"mode": "local"}
        if path == ("feature", "copy_target"):
            return {"enabled": value}
        return None
    if isinstance(value, str) and path in MODE_SECTIONS:
        return {"mode": value}
    return None


def _forget_below(origins: dict[KeyPath, Origin], path: KeyPath) -> None:
    for key in [k for k in origins if len(k) > len(path) and k[: len(path)] == path]:
        del origins[key]


def _merge(
    base: dict[str, Any],
    update: dict[str, Any],
    path: KeyPath,
    origins: dict[KeyPath, Origin],
    origin: Origin,
) -> None:
    for key, value in update.items():
        key_path = (*path, key)
        if path == ("feature", "env") and key in ("include", "exclude"):
            # include and exclude are two ways to select; a higher-precedence source choosing
            # one replaces a lower source's choice instead of making the pair conflict.
            other = "exclude" if key == "include" else "include"
            other_origin = origins.get((*path, other))
            if other in base and (other_origin is None or other_origin.rank < origin.rank):
                del base[other]
                origins.pop((*path, other), None)
                _forget_below(origins, (*path, other))
        current = base.get(key)
        if isinstance(value, dict) and key_path not in _ATOMIC:
            if not isinstance(current, dict) and current is not None:
                expanded = _expand(key_path, current)
                if expanded is not None:
                    base[key] = current = expanded  # keeps the earlier origin for its keys
            if isinstance(current, dict):
                origins.setdefault(key_path, origin)
                _merge(current, value, key_path, origins, origin)
                continue
            base[key] = {}
            _forget_below(origins, key_path)
            origins[key_path] = origin
            _merge(base[key], value, key_path, origins, origin)
            continue
        if isinstance(value, str) and isinstance(current, dict) and key_path in MODE_SECTIONS:
            current["mode"] = value
            origins[(*key_path, "mode")] = origin
            continue
        base[key] = value
        _forget_below(origins, key_path)
        origins[key_path] = origin
