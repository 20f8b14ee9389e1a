"""The settings the CLI hands the layer: one contract, read by the Python layer and the C relay.

The CLI starts the app with three variables: ``MIRRORD_INTPROXY_SOCKET`` (the intproxy's
unix socket; without it the layer stays out of the way), ``MIRRORD_PROXY_TOKEN`` (the
session's token, sent in the first frame) and ``MIRRORD_LAYER_SETTINGS`` (below). The CLI
builds :class:`LayerSettings` from the user's config (``MirrordConfig.layer_contract``)
and puts :meth:`LayerSettings.to_json` in the app's ``MIRRORD_LAYER_SETTINGS`` variable; the
layer reads it back with :meth:`LayerSettings.from_json`. Standard library only: this runs
inside the user's app.

The JSON is one object with four objects in it. Every key is always written; a reader takes
a missing key as its default, refuses an unknown key or a value of the wrong type::

    outgoing   feature.network.outgoing; disabled is tcp = udp = false
      tcp               bool    intercept TCP connects (true)
      udp               bool    intercept UDP connects/sendto (true)
      ignore_localhost  bool    connections to loopback stay local (false)
      filter            filter  or null: every connection goes through the target
    dns        feature.network.dns
      enabled           bool    names resolve in the target (true)
      filter            filter  or null; outgoing-filter names are already reflected in it
    incoming   feature.network.incoming
      mode              str     "mirror" | "steal" | "off" (disabled network is "off")
      http_filter       object  or null: mirrord's http_filter object as written in the config
                                (null fields left out); an empty object is no filter
      port_mapping      [[int, int]]  [local port, target port] pairs
      listen_ports      [[int, int]]  [target port, local port to listen on] pairs
      ignore_ports      [int]   ports never subscribed
      ports             [int]   or null (all): only these ports are subscribed
      ignore_localhost  bool    listeners on loopback are not subscribed (false)
    fs         feature.fs
      mode              str     "local" | "localwithoverrides" | "read" | "write" ("read")
      read_write        [str]   Rust regexes of paths read and written remotely
      read_only         [str]   ... read remotely, written locally
      local             [str]   ... kept local
      not_found         [str]   ... that do not exist for the app
      mapping           {str: str}  Rust regex -> replacement, applied to a path first
      readonly_file_buffer  int or null: bytes one small remote read fetches

    filter = {"mode": "local" | "remote", "entries": [str]}  (entries in mirrord's syntax,
             e.g. "tcp://1.1.1.0/24:1337", "db.local:5432", ":53")
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

__all__ = [
    "DnsSettings",
    "FilterSettings",
    "FsSettings",
    "IncomingSettings",
    "LayerSettings",
    "OutgoingSettings",
    "SettingsError",
]

SOCKET_ENV = "MIRRORD_INTPROXY_SOCKET"
TOKEN_ENV = "MIRRORD_PROXY_TOKEN"
SETTINGS_ENV = "MIRRORD_LAYER_SETTINGS"

INCOMING_MODES = ("mirror", "steal", "off")
FS_MODES = ("local", "localwithoverrides", "read", "write")
FILTER_MODES = ("local", "remote")


class SettingsError(ValueError):
    """``MIRRORD_LAYER_SETTINGS`` does not follow the contract; the message names the key."""


# ------------------------------------------------------------------------- value checks


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise SettingsError(f"{where}: expected true or false")
    return value


def _int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise SettingsError(f"{where}: expected an integer")
    return value


def _port(value: Any, where: str) -> int:
    if not 0 <= _int(value, where) <= 0xFFFF:
        raise SettingsError(f"{where}: expected a port (0-65535)")
    return int(value)


def _choice(value: Any, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise SettingsError(f"{where}: expected one of {', '.join(choices)}")
    return str(value)


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SettingsError(f"{where}: expected a list of strings")
    return list(value)


def _ports(value: Any, where: str) -> list[int]:
    if not isinstance(value, list):
        raise SettingsError(f"{where}: expected a list of ports")
    return [_port(v, where) for v in value]


def _pairs(value: Any, where: str) -> list[list[int]]:
    if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 for p in value):
        raise SettingsError(f"{where}: expected a list of [port, port] pairs")
    return [[_port(a, where), _port(b, where)] for a, b in value]


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise SettingsError(f"{where}: expected an object")
    return dict(value)


def _str_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise SettingsError(f"{where}: expected an object of strings")
    return dict(value)


def _or_none(check: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    return lambda value, where: None if value is None else check(value, where)


T = TypeVar("T")


def _read(
    cls: type[T], data: Any, where: str, checks: Mapping[str, Callable[[Any, str], Any]]
) -> T:
    """`cls` from a JSON object: each present key checked, missing keys left at defaults.

    `where` is the object's dotted path ("" for the whole settings), for error messages.
    """
    obj = _object(data, where or "layer settings")
    unknown = [key for key in obj if key not in checks]
    if unknown:
        raise SettingsError(f"{where or 'layer settings'}: unknown key {unknown[0]!r}")
    prefix = f"{where}." if where else ""
    values = {key: check(obj[key], prefix + key) for key, check in checks.items() if key in obj}
    return cls(**values)


def _plain(value: Any) -> Any:
    """A JSON-ready copy (nested settings become objects, lists are copied)."""
    if isinstance(value, _Settings):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class _Settings:
    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this section, every key present."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class FilterSettings(_Settings):
    """A local/remote filter: ``mode`` says what matching entries do."""

    mode: str
    entries: list[str]

    @classmethod
    def from_dict(cls, data: Any, where: str = "filter") -> FilterSettings:
        obj = _object(data, where)
        if set(obj) != {"mode", "entries"}:
            raise SettingsError(f"{where}: expected an object with mode and entries")
        return cls(
            mode=_choice(obj["mode"], FILTER_MODES, f"{where}.mode"),
            entries=_strings(obj["entries"], f"{where}.entries"),
        )


def _filter(value: Any, where: str) -> FilterSettings | None:
    return None if value is None else FilterSettings.from_dict(value, where)


@dataclass(frozen=True)
class OutgoingSettings(_Settings):
    """``feature.network.outgoing`` resolved; disabled means ``tcp = udp = False``."""

    tcp: bool = True
    udp: bool = True
    ignore_localhost: bool = False
    filter: FilterSettings | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str = "outgoing") -> OutgoingSettings:
        checks = {"tcp": _bool, "udp": _bool, "ignore_localhost": _bool, "filter": _filter}
        return _read(cls, data, where, checks)


@dataclass(frozen=True)
class DnsSettings(_Settings):
    """``feature.network.dns`` resolved."""

    enabled: bool = True
    filter: FilterSettings | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str = "dns") -> DnsSettings:
        return _read(cls, data, where, {"enabled": _bool, "filter": _filter})


@dataclass(frozen=True)
class IncomingSettings(_Settings):
    """``feature.network.incoming`` resolved (mode "off" when disabled)."""

    mode: str = "mirror"
    http_filter: dict[str, Any] | None = None
    port_mapping: list[list[int]] = field(default_factory=list)
    listen_ports: list[list[int]] = field(default_factory=list)
    ignore_ports: list[int] = field(default_factory=list)
    ports: list[int] | None = None
    ignore_localhost: bool = False

    @classmethod
    def from_dict(cls, data: Any, where: str = "incoming") -> IncomingSettings:
        checks = {
            "mode": lambda v, w: _choice(v, INCOMING_MODES, w),
            "http_filter": _or_none(_object),
            "port_mapping": _pairs,
            "listen_ports": _pairs,
            "ignore_ports": _ports,
            "ports": _or_none(_ports),
            "ignore_localhost": _bool,
        }
        return _read(cls, data, where, checks)


@dataclass(frozen=True)
class FsSettings(_Settings):
    """``feature.fs`` resolved: true is mode "read", false is "local"."""

    mode: str = "read"
    read_write: list[str] = field(default_factory=list)
    read_only: list[str] = field(default_factory=list)
    local: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    mapping: dict[str, str] = field(default_factory=dict)
    readonly_file_buffer: int | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str = "fs") -> FsSettings:
        checks = {
            "mode": lambda v, w: _choice(v, FS_MODES, w),
            "read_write": _strings,
            "read_only": _strings,
            "local": _strings,
            "not_found": _strings,
            "mapping": _str_map,
            "readonly_file_buffer": _or_none(_int),
        }
        return _read(cls, data, where, checks)


@dataclass(frozen=True)
class LayerSettings(_Settings):
    """Everything the layer needs from the config, as ``MIRRORD_LAYER_SETTINGS`` carries it."""

    outgoing: OutgoingSettings = field(default_factory=OutgoingSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    incoming: IncomingSettings = field(default_factory=IncomingSettings)
    fs: FsSettings = field(default_factory=FsSettings)

    @classmethod
    def from_dict(cls, data: Any) -> LayerSettings:
        checks = {
            "outgoing": OutgoingSettings.from_dict,
            "dns": DnsSettings.from_dict,
            "incoming": IncomingSettings.from_dict,
            "fs": FsSettings.from_dict,
        }
        return _read(cls, data, "", checks)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> LayerSettings:
        """Parse ``MIRRORD_LAYER_SETTINGS``; an empty string is the defaults."""
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError as exc:
            raise SettingsError(f"layer settings: not JSON ({exc})") from None
        return cls.from_dict(data)
