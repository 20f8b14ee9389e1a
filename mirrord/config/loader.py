"""Load ``mirrord.json`` (or .toml/.yaml), ``MIRRORD_*`` variables and CLI overrides.

Precedence, lowest first: config file < ``MIRRORD_*`` environment variables < overrides.
Every problem becomes a one-line :class:`~mirrord.config.errors.ConfigError` naming the source
(file and, where it can be found, the line), the dotted key path and what is wrong.
"""

from __future__ import annotations

import bisect
import copy
import difflib
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sized
from dataclasses import dataclass
from json.decoder import scanstring  # type: ignore[attr-defined]  # not in the stubs
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from mirrord.config.errors import ConfigError
from mirrord.config.model import MirrordConfig, submodels

__all__ = ["DEFAULT_CONFIG_PATH", "ENV_VARS", "load_config"]

DEFAULT_CONFIG_PATH = Path(".mirrord") / "mirrord.json"

KeyPath = tuple[str | int, ...]

# MIRRORD_* variables, as mirrord names them (`#[config(env = ...)]` / `FromEnv::new(...)` in
# mirrord/config/src): variable -> (dotted key, how the value is parsed).
ENV_VARS: dict[str, tuple[str, str]] = {
    "MIRRORD_IMPERSONATED_TARGET": ("target.path", "str"),
    "MIRRORD_TARGET_NAMESPACE": ("target.namespace", "str"),
    "MIRRORD_OVERRIDE_ENV_VARS_INCLUDE": ("feature.env.include", "list"),
    "MIRRORD_OVERRIDE_ENV_VARS_EXCLUDE": ("feature.env.exclude", "list"),
    "MIRRORD_OVERRIDE_ENV_VARS_FILE": ("feature.env.env_file", "str"),
    "MIRRORD_ENV_LOAD_FROM_PROCESS": ("feature.env.load_from_process", "bool"),
    "MIRRORD_TCP_OUTGOING": ("feature.network.outgoing.tcp", "bool"),
    "MIRRORD_UDP_OUTGOING": ("feature.network.outgoing.udp", "bool"),
    "MIRRORD_OUTGOING_REMOTE_UNIX_STREAMS": ("feature.network.outgoing.unix_streams", "list"),
    "MIRRORD_REMOTE_DNS": ("feature.network.dns.enabled", "bool"),
    "MIRRORD_ENABLE_IPV6": ("feature.network.ipv6", "bool"),
    "MIRRORD_FILE_MODE": ("feature.fs.mode", "str"),
    "MIRRORD_FILE_READ_WRITE_PATTERN": ("feature.fs.read_write", "list"),
    "MIRRORD_FILE_READ_ONLY_PATTERN": ("feature.fs.read_only", "list"),
    "MIRRORD_FILE_LOCAL_PATTERN": ("feature.fs.local", "list"),
    "MIRRORD_AGENT_TTL": ("agent.ttl", "int"),
    "MIRRORD_AGENT_NAMESPACE": ("agent.namespace", "str"),
    "MIRRORD_AGENT_RUST_LOG": ("agent.log_level", "str"),
    "MIRRORD_AGENT_JSON_LOG": ("agent.json_log", "bool"),
    "MIRRORD_AGENT_IMAGE": ("agent.image", "str"),
    "MIRRORD_AGENT_IMAGE_PULL_POLICY": ("agent.image_pull_policy", "str"),
    "MIRRORD_EPHEMERAL_CONTAINER": ("agent.ephemeral", "bool"),
    "MIRRORD_AGENT_COMMUNICATION_TIMEOUT": ("agent.communication_timeout", "int"),
    "MIRRORD_AGENT_STARTUP_TIMEOUT": ("agent.startup_timeout", "int"),
    "MIRRORD_AGENT_STEALER_FLUSH_CONNECTIONS": ("agent.flush_connections", "bool"),
    "MIRRORD_AGENT_EXTERNAL_IP_FIX": ("agent.external_ip_fix", "bool"),
    "MIRRORD_AGENT_EXCLUDE_FROM_MESH": ("agent.exclude_from_mesh", "bool"),
    "MIRRORD_AGENT_HTTP_DETECTION_TIMEOUT": ("agent.http_detection_timeout", "int"),
    "MIRRORD_AGENT_CLEAN_IPTABLES_ON_START": ("agent.clean_iptables_on_start", "bool"),
    "MIRRORD_ACCEPT_INVALID_CERTIFICATES": ("accept_invalid_certificates", "bool"),
    "MIRRORD_SKIP_PROCESSES": ("skip_processes", "list"),
    "MIRRORD_SKIP_BUILD_TOOLS": ("skip_build_tools", "bool"),
    "MIRRORD_SKIP_EXTRA_BUILD_TOOLS": ("skip_extra_build_tools", "list"),
    "MIRRORD_SKIP_SIP": ("skip_sip", "list"),
    "MIRRORD_OPERATOR_ENABLE": ("operator", "bool"),
    "MIRRORD_MULTI_CLUSTER": ("multi_cluster", "bool"),
    "MIRRORD_API": ("api", "bool"),
    "MIRRORD_KUBECONFIG": ("kubeconfig", "str"),
    "MIRRORD_KUBE_CONTEXT": ("kube_context", "str"),
    "MIRRORD_TELEMETRY": ("telemetry", "bool"),
    "MIRRORD_PROXY": ("use_proxy", "bool"),
}

# Keys this project acts on; everything else mirrord knows is accepted but reported.
_IMPLEMENTED: tuple[KeyPath, ...] = (
    ("target",),
    ("feature", "env", "include"),
    ("feature", "env", "exclude"),
    ("feature", "env", "override"),
    ("feature", "env", "unset"),
    ("feature", "env", "env_file"),
    ("feature", "env", "mapping"),
    ("feature", "network", "outgoing", "tcp"),
    ("feature", "network", "outgoing", "udp"),
    ("feature", "network", "outgoing", "ignore_localhost"),
    ("feature", "network", "outgoing", "filter"),
    ("feature", "network", "dns"),
    ("feature", "network", "incoming", "mode"),
    ("feature", "network", "incoming", "http_filter", "header_filter"),
    ("feature", "network", "incoming", "http_filter", "path_filter"),
    ("feature", "network", "incoming", "http_filter", "method_filter"),
    ("feature", "network", "incoming", "http_filter", "all_of"),
    ("feature", "network", "incoming", "http_filter", "any_of"),
    ("feature", "network", "incoming", "http_filter", "ports"),
    ("feature", "network", "incoming", "port_mapping"),
    ("feature", "network", "incoming", "listen_ports"),
    ("feature", "network", "incoming", "ignore_ports"),
    ("feature", "network", "incoming", "ports"),
    ("feature", "network", "incoming", "ignore_localhost"),
    ("feature", "fs"),  # every key: mode, the regex lists, mapping, readonly_file_buffer
    ("agent", "ttl"),
    # Kubernetes targets: the agent pod (mirrord/kube/agent_spec.py) and the cluster
    *(
        ("agent", key)
        for key in (
            "namespace",
            "image",
            "image_pull_policy",
            "image_pull_secrets",
            "ephemeral",
            "communication_timeout",
            "startup_timeout",
            "disabled_capabilities",
            "tolerations",
            "resources",
            "privileged",
            "labels",
            "annotations",
            "node_selector",
            "service_account",
            "priority_class",
            "security_context",
            "disable_mesh_sidecar_injection",
            "log_level",
        )
    ),
    ("kubeconfig",),
    ("kube_context",),
)
# `true`/`false` on these sections only switches implemented things on or off.
_IMPLEMENTED_TOGGLES: tuple[KeyPath, ...] = (
    ("feature", "network", "incoming"),
    ("feature", "env"),
    ("feature", "network"),
    ("feature", "network", "outgoing"),
)
# A string here is shorthand for the section's "mode" key.
_MODE_SECTIONS: tuple[KeyPath, ...] = (("feature", "fs"), ("feature", "network", "incoming"))

# Values that are replaced as a whole even when they are objects (a target path object).
_ATOMIC: tuple[KeyPath, ...] = (("target", "path"),)

_FILE, _ENV, _OVERRIDE = 0, 1, 2


@dataclass(frozen=True)
class _Origin:
    rank: int  # _FILE < _ENV < _OVERRIDE
    label: str  # file name, variable name or override key


# ------------------------------------------------------------------------- public entry


def load_config(
    path: Path | str | None = None,
    *,
    env: Mapping[str, str] = os.environ,
    overrides: Mapping[str, Any] | None = None,
) -> MirrordConfig:
    """Load the configuration: file < ``MIRRORD_*`` variables in ``env`` < ``overrides``.

    ``path`` ``None`` means ``.mirrord/mirrord.json`` in the current directory if it exists,
    else no file. ``overrides`` maps dotted key paths to values, e.g.
    ``{"target": "netns/x", "feature.network.dns.enabled": False}``; a ``None`` value is
    skipped, so unset CLI options can be passed straight through.
    """
    if path is None and DEFAULT_CONFIG_PATH.is_file():
        path = DEFAULT_CONFIG_PATH

    merged: dict[str, Any] = {}
    origins: dict[KeyPath, _Origin] = {}
    layers: list[dict[str, Any]] = []
    locate: Callable[[KeyPath], int | None] = _no_position
    source_name: str | None = None

    if path is not None:
        source_name = str(path)
        tree, locate = _read_file(Path(path), source_name)
        _add_layer(merged, origins, layers, tree, _Origin(_FILE, source_name))

    for name, (dotted, kind) in ENV_VARS.items():
        raw = env.get(name)
        if raw is None or raw == "":  # an empty variable counts as unset
            continue
        value = _parse_env_value(name, dotted, kind, raw)
        tree = _tree_from_path(_split_key(dotted), value)
        _add_layer(merged, origins, layers, tree, _Origin(_ENV, name))

    for dotted, value in (overrides or {}).items():
        if value is None:  # "not given" (e.g. an unset CLI option), not "reset"
            continue
        if not isinstance(dotted, str) or not all(_split_key(dotted)):
            raise ConfigError(f"invalid key path {dotted!r}", source="command-line override")
        tree = _tree_from_path(_split_key(dotted), _plain(value))
        _add_layer(merged, origins, layers, tree, _Origin(_OVERRIDE, dotted))

    try:
        cfg = MirrordConfig.model_validate(merged)
    except ValidationError as err:
        raise _to_config_error(err, origins, locate) from None

    unimplemented: list[str] = []
    for layer in layers:
        for key_path, value in _leaf_paths(MirrordConfig, layer, ()):
            dotted = ".".join(map(str, key_path))
            if not _is_implemented(key_path, value) and dotted not in unimplemented:
                unimplemented.append(dotted)
    cfg._unimplemented_keys = sorted(unimplemented)
    return cfg


# ------------------------------------------------------------------------------ files


def _no_position(_key_path: KeyPath) -> int | None:
    return None


def _read_file(path: Path, name: str) -> tuple[dict[str, Any], Callable[[KeyPath], int | None]]:
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

    positions: dict[KeyPath, int]
    if suffix in ("", ".json"):  # mirrord also reads a file without extension as JSON
        data, positions = _parse_json(text, name)
    elif suffix == ".toml":
        data, positions = _parse_toml(text, name)
    else:
        data, positions = _parse_yaml(text, name)

    if not isinstance(data, dict):
        raise ConfigError(
            f"expected an object at the top level, got {_describe_value(data)}", source=name
        )

    def locate(key_path: KeyPath) -> int | None:
        # The closest recorded ancestor: a bad list item falls back to its key's line.
        for end in range(len(key_path), 0, -1):
            line = positions.get(key_path[:end])
            if line is not None:
                return line
        return None

    return data, locate


def _parse_json(text: str, name: str) -> tuple[Any, dict[KeyPath, int]]:
    # mirrord reads JSON with serde_json: no comments, no trailing commas.
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"invalid JSON: {err.msg} (column {err.colno})", source=name, line=err.lineno
        ) from None
    positions, duplicates = _locate_json(text)
    if duplicates:
        dup_path, dup_line = duplicates[0]
        raise ConfigError(
            "duplicate key", source=name, line=dup_line, key=".".join(map(str, dup_path))
        )
    return data, positions


_JSON_WS = re.compile(r"[ \t\n\r]*")
_JSON_SCALAR = re.compile(
    r"(?:-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|true|false|null)"
)


def _locate_json(text: str) -> tuple[dict[KeyPath, int], list[tuple[KeyPath, int]]]:
    """Line of every key and list item of (already validated) JSON, plus duplicate keys.

    The standard json module keeps no positions, so this walks the text once more.
    """
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    positions: dict[KeyPath, int] = {}
    duplicates: list[tuple[KeyPath, int]] = []

    def line_of(index: int) -> int:
        return bisect.bisect_right(line_starts, index)

    def skip(i: int) -> int:
        match = _JSON_WS.match(text, i)
        return match.end() if match else i

    def value(i: int, path: KeyPath) -> int:
        i = skip(i)
        char = text[i]
        if char == "{":
            seen: set[str] = set()
            i = skip(i + 1)
            if text[i] == "}":
                return i + 1
            while True:
                i = skip(i)
                key, end = scanstring(text, i + 1)
                key_path = (*path, key)
                if key in seen:
                    duplicates.append((key_path, line_of(i)))
                seen.add(key)
                positions.setdefault(key_path, line_of(i))
                i = skip(end) + 1  # past ':'
                i = skip(value(i, key_path))
                if text[i] == ",":
                    i += 1
                    continue
                return i + 1
        if char == "[":
            i = skip(i + 1)
            if text[i] == "]":
                return i + 1
            index = 0
            while True:
                i = skip(i)
                positions.setdefault((*path, index), line_of(i))
                i = skip(value(i, (*path, index)))
                index += 1
                if text[i] == ",":
                    i += 1
                    continue
                return i + 1
        if char == '"':
            return scanstring(text, i + 1)[1]
        match = _JSON_SCALAR.match(text, i)
        return match.end() if match else i + 1

    try:
        value(0, ())
    except (IndexError, ValueError, RecursionError):
        pass  # positions are best effort; the data itself came from json.loads
    return positions, duplicates


def _parse_toml(text: str, name: str) -> tuple[Any, dict[KeyPath, int]]:
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
    return data, _locate_toml(text)


_TOML_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_TOML_KEY = rf"{_TOML_KEY_PART}(?:\s*\.\s*{_TOML_KEY_PART})*"
_TOML_TABLE = re.compile(rf"^\s*\[\[?\s*({_TOML_KEY})\s*\]\]?")
_TOML_ASSIGN = re.compile(rf"^\s*({_TOML_KEY})\s*=")


def _split_toml_key(key: str) -> KeyPath:
    parts = re.findall(_TOML_KEY_PART, key)
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in parts)


def _locate_toml(text: str) -> dict[KeyPath, int]:
    # Best effort: tomllib keeps no positions; table headers and `key =` lines cover
    # ordinary config files (inline tables and multi-line values map to their first line).
    positions: dict[KeyPath, int] = {}
    table: KeyPath = ()
    for lineno, line in enumerate(text.splitlines(), 1):
        if match := _TOML_TABLE.match(line):
            table = _split_toml_key(match.group(1))
            for end in range(1, len(table) + 1):
                positions.setdefault(table[:end], lineno)
        elif match := _TOML_ASSIGN.match(line):
            key = table + _split_toml_key(match.group(1))
            for end in range(len(table) + 1, len(key) + 1):
                positions.setdefault(key[:end], lineno)
    return positions


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


def _parse_yaml(text: str, name: str) -> tuple[Any, dict[KeyPath, int]]:
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
    positions: dict[KeyPath, int] = {}
    duplicates: list[tuple[KeyPath, int]] = []

    def walk(node: yaml.Node | None, path: KeyPath) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                line = key_node.start_mark.line + 1
                if key in seen:
                    duplicates.append(((*path, key), line))
                seen.add(key)
                positions.setdefault((*path, key), line)
                walk(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                positions.setdefault((*path, index), item.start_mark.line + 1)
                walk(item, (*path, index))

    walk(root, ())
    if duplicates:
        dup_path, dup_line = duplicates[0]
        raise ConfigError(
            "duplicate key", source=name, line=dup_line, key=".".join(map(str, dup_path))
        )
    return data, positions


# ------------------------------------------------------------------ env and overrides


def _parse_env_value(name: str, dotted: str, kind: str, raw: str) -> Any:
    source = f"environment variable {name}"
    if kind == "bool":
        # Rust's bool::from_str: exactly "true" or "false".
        if raw not in ("true", "false"):
            raise ConfigError(
                f'expected "true" or "false", got {json.dumps(raw)}', source=source, key=dotted
            )
        return raw == "true"
    if kind == "int":
        if not re.fullmatch(r"\+?[0-9]+", raw.strip()):
            raise ConfigError(
                f"expected a non-negative integer, got {json.dumps(raw)}", source=source, key=dotted
            )
        return int(raw.strip())
    if kind == "list":
        # mirrord splits list-valued variables on ';'.
        return [part for part in raw.split(";") if part]
    return raw


def _split_key(dotted: str) -> list[str]:
    return dotted.split(".")


def _plain(value: Any) -> Any:
    """Deep copy of an override value with tuples/sets turned into lists (as JSON would be)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return copy.deepcopy(value)


def _tree_from_path(path: list[str], value: Any) -> dict[str, Any]:
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


def _add_layer(
    merged: dict[str, Any],
    origins: dict[KeyPath, _Origin],
    layers: list[dict[str, Any]],
    tree: dict[str, Any],
    origin: _Origin,
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
    if isinstance(value, str) and path in _MODE_SECTIONS:
        return {"mode": value}
    return None


def _forget_below(origins: dict[KeyPath, _Origin], path: KeyPath) -> None:
    for key in [k for k in origins if len(k) > len(path) and k[: len(path)] == path]:
        del origins[key]


def _merge(
    base: dict[str, Any],
    update: dict[str, Any],
    path: KeyPath,
    origins: dict[KeyPath, _Origin],
    origin: _Origin,
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
        if isinstance(value, str) and isinstance(current, dict) and key_path in _MODE_SECTIONS:
            current["mode"] = value
            origins[(*key_path, "mode")] = origin
            continue
        base[key] = value
        _forget_below(origins, key_path)
        origins[key_path] = origin


# ------------------------------------------------------------------------------ errors


def _describe_value(value: Any) -> str:
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


def _list_items(annotation: Any) -> list[Any]:
    """Item types of the list types inside ``annotation`` (through Annotated/Union)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _list_items(typing.get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [item for arg in typing.get_args(annotation) for item in _list_items(arg)]
    if origin is list:
        return list(typing.get_args(annotation)[:1])
    return []


def _fields_at(path: KeyPath) -> list[str]:
    """Field names of the config object at ``path`` (for "did you mean")."""
    annotations: list[Any] = [MirrordConfig]
    for part in path:
        if isinstance(part, int):
            annotations = [item for a in annotations for item in _list_items(a)]
            continue
        annotations = [
            model.model_fields[part].annotation
            for a in annotations
            for model in submodels(a)
            if part in model.model_fields
        ]
    names: list[str] = []
    for annotation in annotations:
        for model in submodels(annotation):
            names.extend(n for n in model.model_fields if n not in names)
    return names


def _count(value: Any) -> int:
    return len(value) if isinstance(value, Sized) else 0


def _message(error: Mapping[str, Any], loc: KeyPath) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        names = _fields_at(loc[:-1])
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        return "unknown key" + (f' (did you mean "{close[0]}"?)' if close else "")
    if kind == "missing":
        return "required key is missing"
    if kind == "invalid_key":
        return "keys must be strings"
    if kind in ("greater_than_equal", "greater_than"):
        return f"must be at least {ctx.get('ge', ctx.get('gt'))}, got {_describe_value(value)}"
    if kind in ("less_than_equal", "less_than"):
        return f"must be at most {ctx.get('le', ctx.get('lt'))}, got {_describe_value(value)}"
    if kind == "too_short":
        return f"expected at least {ctx.get('min_length')} items, got {_count(value)}"
    if kind == "too_long":
        return f"expected at most {ctx.get('max_length')} items, got {_count(value)}"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", '"')
        return f"expected one of {expected}, got {_describe_value(value)}"
    if kind in _TYPE_MESSAGES:
        base = _TYPE_MESSAGES[kind] or str(error["msg"])
        return f"{base}, got {_describe_value(value)}"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _origin_for(loc: KeyPath, origins: dict[KeyPath, _Origin]) -> _Origin | None:
    best: tuple[int, _Origin] | None = None
    for key_path, origin in origins.items():
        if loc[: len(key_path)] == key_path and (best is None or len(key_path) > best[0]):
            best = (len(key_path), origin)
    if best is not None:
        return best[1]
    # The error is about an object as a whole (e.g. a missing key): the latest source wins.
    below = [o for k, o in origins.items() if k[: len(loc)] == loc]
    return max(below, key=lambda o: o.rank, default=None)


def _to_config_error(
    err: ValidationError,
    origins: dict[KeyPath, _Origin],
    locate: Callable[[KeyPath], int | None],
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
    if origin.rank == _FILE:
        return ConfigError(message, source=origin.label, line=locate(loc), key=key)
    if origin.rank == _ENV:
        return ConfigError(message, source=f"environment variable {origin.label}", key=key)
    return ConfigError(message, source="command-line override", key=key)


# ---------------------------------------------------------------- unimplemented keys


def _leaf_paths(
    model: type[BaseModel], tree: Mapping[str, Any], prefix: KeyPath
) -> Iterator[tuple[KeyPath, Any]]:
    """Dotted paths actually set in ``tree`` (following config objects, not maps/lists)."""
    for key, value in tree.items():
        if value is None:
            continue
        key_path = (*prefix, key)
        info = model.model_fields.get(key)
        candidates = submodels(info.annotation) if info is not None else []
        if isinstance(value, dict) and candidates:
            if not value:
                continue  # an empty section sets nothing
            for sub in candidates:
                if set(value) <= set(sub.model_fields):
                    yield from _leaf_paths(sub, value, key_path)
                    break
            else:
                yield key_path, value
        else:
            yield key_path, value


def _is_implemented(key_path: KeyPath, value: Any) -> bool:
    if any(key_path[: len(p)] == p for p in _IMPLEMENTED):
        return True
    # a bool switches a section; a string is the "mode" shorthand of a mode section
    return key_path in _IMPLEMENTED_TOGGLES and isinstance(value, bool | str)
