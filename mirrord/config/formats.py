"""Reading a config file: JSON (also without extension), TOML or YAML, into a tree of keys.

Each reader returns the tree and where its keys are (``positions``); a syntax error, a
duplicate key or an unreadable file is a one-line :class:`ConfigError` with the line.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from mirrord.config.errors import ConfigError, describe_value
from mirrord.config.positions import (
    Duplicates,
    Locator,
    Positions,
    locate_json,
    locate_toml,
    locate_yaml,
    locator,
)


def read_file(path: Path, name: str) -> tuple[dict[str, Any], Locator]:
    suffix = path.suffix.lower()
    if suffix not in ("", ".json", ".toml", ".yaml", ".yml"):
        raise ConfigError(
            f'unsupported config file extension "{path.suffix}" (use .json, .toml, .yaml or .yml)',
            source=name,
        )
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate a BOM
    except FileNotFoundError:
        raise ConfigError("no such file", source=name) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", source=name) from None
    except PermissionError:
        raise ConfigError("permission denied", source=name) from None
    except UnicodeDecodeError:
        raise ConfigError("not valid UTF-8 text", source=name) from None
    except OSError as err:
        raise ConfigError(f"cannot read: {err.strerror or err}", source=name) from None

    positions: Positions
    if suffix in ("", ".json"):  # mirrord also reads a file without extension as JSON
        data, positions = _parse_json(text, name)
    elif suffix == ".toml":
        data, positions = _parse_toml(text, name)
    else:
        data, positions = _parse_yaml(text, name)

    if not isinstance(data, dict):
        raise ConfigError(
            f"expected an object at the top level, got {describe_value(data)}", source=name
        )

    return data, locator(positions)


def _parse_json(text: str, name: str) -> tuple[Any, Positions]:
    # mirrord reads JSON with serde_json: no comments, no trailing commas.
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"invalid JSON: {err.msg} (column {err.colno})", source=name, line=err.lineno
        ) from None
    positions, duplicates = locate_json(text)
    _refuse_duplicates(duplicates, name)
    return data, positions


def _parse_toml(text: str, name: str) -> tuple[Any, Positions]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        match = re.search(r"\s*\(at line (\d+), column (\d+)\)\s*$", message)
        line = None
        if match:
            line = int(match.group(1))
            message = f"{message[: match.start()]} (column {match.group(2)})"
        raise ConfigError(f"invalid TOML: {message}", source=name, line=line) from None
    return data, locate_toml(text)


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans, as mirrord's YAML reader has.

    PyYAML's 1.1 rules would read ``mode: off`` or ``tcp: no`` as booleans.
    """


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _parse_yaml(text: str, name: str) -> tuple[Any, Positions]:
    try:
        data = yaml.load(text, Loader=_YamlLoader)  # a SafeLoader subclass: no arbitrary objects
        root = yaml.compose(text, Loader=_YamlLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = err.problem or err.context or "syntax error"
        raise ConfigError(
            f"invalid YAML: {problem}", source=name, line=None if mark is None else mark.line + 1
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid YAML: {err}", source=name) from None
    if data is None:  # an empty document is an empty config
        data = {}
    positions, duplicates = locate_yaml(root)
    _refuse_duplicates(duplicates, name)
    return data, positions


def _refuse_duplicates(duplicates: Duplicates, name: str) -> None:
    # mirrord's readers refuse a key given twice in one object
    if duplicates:
        dup_path, dup_line = duplicates[0]
        raise ConfigError(
            "duplicate key", source=name, line=dup_line, key=".".join(map(str, dup_path))
        )
