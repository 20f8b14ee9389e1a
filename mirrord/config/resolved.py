"""The config's sections resolved into plain settings, whichever form the user wrote.

mirrord lets ``feature.env``, ``feature.fs``, ``feature.network.*`` be ``true``/``false``, a
mode string or an object; these functions turn each into one settings object. What the
layer needs is the layer contract itself (``mirrord.settings.contract``); the environment
settings stay with the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from mirrord.settings.contract import (
    DnsSettings,
    FilterSettings,
    FsSettings,
    IncomingSettings,
    OutgoingSettings,
)
from mirrord.settings.outgoing_filter import parse_entry

if TYPE_CHECKING:  # the schema's root model imports this module
    from mirrord.config.schema.env import EnvConfig
    from mirrord.config.schema.feature import FeatureConfig
    from mirrord.config.schema.fs import FsConfig

S = TypeVar("S", FsSettings, IncomingSettings)

#: The old name of the contract's filter.
FilterSpec = FilterSettings


@dataclass(frozen=True)
class EnvSettings:
    """Resolved ``feature.env``; ``include``/``exclude`` ``None`` means "not given"."""

    enabled: bool = True
    include: list[str] | None = None
    exclude: list[str] | None = None
    override: dict[str, str] = field(default_factory=dict)
    unset: list[str] = field(default_factory=list)
    env_file: str | None = None
    mapping: dict[str, str] = field(default_factory=dict)


def resolve_env(value: bool | EnvConfig | EnvSettings | None) -> EnvSettings:
    """Normalise any form of ``feature.env`` to :class:`EnvSettings`."""
    if isinstance(value, EnvSettings):
        return value
    if value is None or value is True:
        return EnvSettings()
    if value is False:
        # mirrord's disabled env is "exclude everything".
        return EnvSettings(enabled=False, exclude=["*"])
    return EnvSettings(
        enabled=True,
        include=None if value.include is None else list(value.include),
        exclude=None if value.exclude is None else list(value.exclude),
        override=dict(value.override or {}),
        unset=list(value.unset or []),
        env_file=value.env_file,
        mapping=dict(value.mapping or {}),
    )


def _short_form(value: bool | str | None, settings: type[S], off: str) -> S:
    """A mode section written as true (defaults), false (mode `off`) or its mode string."""
    if value is None or value is True:
        return settings()
    return settings(mode=off if value is False else value)  # type: ignore[call-arg]


def resolve_fs(value: bool | str | FsConfig | None) -> FsSettings:
    """Normalise any form of ``feature.fs`` to :class:`FsSettings`."""
    if value is None or isinstance(value, bool | str):
        return _short_form(value, FsSettings, off="local")
    return FsSettings(
        mode=value.mode or "read",
        read_write=list(value.read_write or []),
        read_only=list(value.read_only or []),
        local=list(value.local or []),
        not_found=list(value.not_found or []),
        mapping=dict(value.mapping or {}),
        readonly_file_buffer=value.readonly_file_buffer,
    )


def resolve_incoming(feature: FeatureConfig) -> IncomingSettings:
    """``feature.network.incoming``: true is "mirror", false is "off"."""
    network = feature.network  # true/false set every section at once
    section = network if isinstance(network, bool) else network.incoming
    if section is None or isinstance(section, bool | str):
        return _short_form(section, IncomingSettings, off="off")
    http_filter = section.http_filter
    return IncomingSettings(
        mode=section.mode or "mirror",
        http_filter=(
            None
            if http_filter is None or isinstance(http_filter, bool)
            else http_filter.model_dump(exclude_none=True)
        ),
        port_mapping=[list(pair) for pair in section.port_mapping or []],
        listen_ports=[list(pair) for pair in section.listen_ports or []],
        ignore_ports=list(section.ignore_ports or []),
        ports=None if section.ports is None else list(section.ports),
        ignore_localhost=bool(section.ignore_localhost),
    )


def resolve_outgoing(feature: FeatureConfig) -> OutgoingSettings:
    """``feature.network.outgoing``; disabled means ``tcp = udp = False``."""
    network = feature.network  # true/false set every section at once
    section = network if isinstance(network, bool) else network.outgoing
    if section is False:
        return OutgoingSettings(tcp=False, udp=False)
    if section is True:
        return OutgoingSettings()
    return OutgoingSettings(
        tcp=section.tcp,
        udp=section.udp,
        ignore_localhost=section.ignore_localhost,
        filter=None if section.filter is None else section.filter.spec,
    )


def resolve_dns(feature: FeatureConfig) -> DnsSettings:
    """``feature.network.dns``, with outgoing-filter host names reflected in it.

    Like mirrord, host names of an outgoing filter are resolved on the side that handles
    their connections: ``outgoing.filter.local = ["db.local"]`` implies ``dns.filter.local``
    gets ``"db.local"`` too.
    """
    network = feature.network  # true/false set every section at once
    section = network if isinstance(network, bool) else network.dns
    if section is False or (section is not True and not section.enabled):
        return DnsSettings(enabled=False)
    spec = None if section is True or section.filter is None else section.filter.spec
    return DnsSettings(
        enabled=True, filter=_reflect_outgoing_names(resolve_outgoing(feature), spec)
    )


def _reflect_outgoing_names(
    outgoing: OutgoingSettings, dns: FilterSettings | None
) -> FilterSettings | None:
    # mirrord's reflect_outgoing_filter_in_dns: same-side names are appended (or a local DNS
    # filter created); names on the opposite side of an existing DNS filter are left alone.
    if outgoing.filter is None:
        return dns
    names = []
    for text in outgoing.filter.entries:
        entry = parse_entry(text)
        if entry.kind == "name" and entry.name is not None:
            names.append(entry.name if entry.port == 0 else f"{entry.name}:{entry.port}")
    if not names:
        return dns
    if dns is None:
        return FilterSettings("local", names) if outgoing.filter.mode == "local" else None
    if dns.mode != outgoing.filter.mode:
        return dns
    merged = list(dns.entries)
    merged.extend(n for n in names if n not in merged)
    return FilterSettings(dns.mode, merged)
