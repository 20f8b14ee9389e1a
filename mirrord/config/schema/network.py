"""``feature.network``: outgoing traffic and its filter, DNS, incoming (mirror/steal)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BeforeValidator, Tag, model_validator
from pydantic_core import PydanticCustomError

from mirrord.config.schema.base import (
    U16,
    OrString,
    PortPair,
    Section,
    StrList,
    str_or_list,
    toggle_error,
)
from mirrord.settings.contract import FilterSettings
from mirrord.settings.outgoing_filter import FilterError, parse_entry

# ---------------------------------------------------------------- feature.network filters


def _entry_checker(allow_protocol: bool) -> AfterValidator:
    """Each filter entry parsed as the layer parses it."""

    def check(value: str) -> str:
        try:
            parse_entry(value, allow_protocol=allow_protocol)
        except FilterError as err:
            raise PydanticCustomError("filter_entry", "{reason}", {"reason": str(err)}) from None
        return value

    return AfterValidator(check)


OutgoingEntries = Annotated[
    list[Annotated[str, _entry_checker(allow_protocol=True)]],
    BeforeValidator(str_or_list),
    OrString(),
]
DnsEntries = Annotated[
    list[Annotated[str, _entry_checker(allow_protocol=False)]],
    BeforeValidator(str_or_list),
    OrString(),
]


class _LocalOrRemote(Section):
    _allow_empty: ClassVar[bool] = True

    @model_validator(mode="after")
    def _exactly_one(self) -> _LocalOrRemote:
        local, remote = getattr(self, "local", None), getattr(self, "remote", None)
        if (local is None) == (remote is None):
            raise PydanticCustomError("filter_shape", 'expected exactly one of "local" or "remote"')
        if not self._allow_empty and not (local or remote):
            raise PydanticCustomError("filter_shape", "the filter list must not be empty")
        return self

    @property
    def spec(self) -> FilterSettings:
        local: list[str] | None = getattr(self, "local", None)
        if local is not None:
            return FilterSettings("local", list(local))
        return FilterSettings("remote", list(getattr(self, "remote", None) or []))


class OutgoingFilterConfig(_LocalOrRemote):
    """``{"local": [...]}`` keeps matching traffic local; ``{"remote": [...]}`` sends it remote."""

    # mirrord panics on an empty outgoing filter; refuse it up front instead.
    _allow_empty: ClassVar[bool] = False

    local: OutgoingEntries | None = None
    remote: OutgoingEntries | None = None


class DnsFilterConfig(_LocalOrRemote):
    """Which names resolve locally (``local``) or remotely (``remote``)."""

    local: DnsEntries | None = None
    remote: DnsEntries | None = None


# ------------------------------------------------------------------ feature.network.*


class OutgoingConfig(Section):
    """``feature.network.outgoing`` in object form."""

    tcp: bool = True
    udp: bool = True
    ignore_localhost: bool = False
    filter: OutgoingFilterConfig | None = None
    unix_streams: StrList | None = None


OutgoingField = Annotated[
    Annotated[bool, Tag("<bool>")] | Annotated[OutgoingConfig, Tag("<object>")],
    toggle_error("true, false or an object"),
]


class DnsConfig(Section):
    """``feature.network.dns`` in object form."""

    enabled: bool = True
    filter: DnsFilterConfig | None = None


DnsField = Annotated[
    Annotated[bool, Tag("<bool>")] | Annotated[DnsConfig, Tag("<object>")],
    toggle_error("true, false or an object"),
]

IncomingMode = Literal["mirror", "steal", "off"]


class BodyFilter(Section):
    body: Literal["json"]
    query: str
    matches: str


class HttpFilterConfig(Section):
    header_filter: str | None = None
    path_filter: str | None = None
    method_filter: str | None = None
    header_filter_jq: str | None = None
    body_filter: BodyFilter | None = None
    all_of: list[dict[str, str]] | None = None
    any_of: list[dict[str, str]] | None = None
    ports: (
        Annotated[list[U16], BeforeValidator(lambda v: [v] if isinstance(v, int) else v)] | None
    ) = None


class TlsDeliveryConfig(Section):
    protocol: Literal["tcp", "tls"]
    trust_roots: list[str] | None = None
    server_name: str | None = None
    server_cert: str | None = None


class IncomingConfig(Section):
    """``feature.network.incoming`` in object form (accepted, not implemented yet)."""

    mode: IncomingMode | None = None
    http_filter: (
        Annotated[
            Annotated[bool, Tag("<bool>")] | Annotated[HttpFilterConfig, Tag("<object>")],
            toggle_error("true, false or an object"),
        ]
        | None
    ) = None
    port_mapping: list[PortPair] | None = None
    listen_ports: list[PortPair] | None = None
    ignore_ports: list[U16] | None = None
    ports: list[U16] | None = None
    ignore_localhost: bool | None = None
    on_concurrent_steal: Literal["override", "continue", "abort"] | None = None
    https_delivery: TlsDeliveryConfig | None = None
    tls_delivery: TlsDeliveryConfig | None = None


IncomingField = Annotated[
    Annotated[bool, Tag("<bool>")]
    | Annotated[IncomingMode, Tag("<str>")]
    | Annotated[IncomingConfig, Tag("<object>")],
    toggle_error('true, false, "mirror", "steal", "off" or an object'),
]


class NetworkConfig(Section):
    """``feature.network`` in object form."""

    incoming: IncomingField | None = None
    outgoing: OutgoingField = True
    dns: DnsField = True
    ipv6: bool | None = None


NetworkField = Annotated[
    Annotated[bool, Tag("<bool>")] | Annotated[NetworkConfig, Tag("<object>")],
    toggle_error("true, false or an object"),
]
