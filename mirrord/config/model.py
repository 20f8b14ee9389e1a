"""Pydantic models of mirrord's configuration tree (``mirrord.json``).

Key names, shapes and defaults follow mirrord's own config (``mirrord/config/src`` in
metalbear-co/mirrord). Every object rejects unknown keys. A ``null`` for a known key means
"not set" (as mirrord's ``Option`` fields do), so the default applies.

Sections that mirrord lets you write as ``true``/``false`` or as an object (``feature.env``,
``feature.network.outgoing``, ...) are kept in that form on the model; the root model's
resolved accessors (:attr:`MirrordConfig.outgoing`, :attr:`MirrordConfig.dns`,
:attr:`MirrordConfig.env`) turn them into plain settings objects.
"""

from __future__ import annotations

import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    GetJsonSchemaHandler,
    PrivateAttr,
    Tag,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

from mirrord.settings.fs_filter import compile_pattern as compile_fs_pattern
from mirrord.settings.outgoing_filter import FilterError, parse_entry
from mirrord.settings.rust_regex import compile_rust_regex

__all__ = [
    "AgentConfig",
    "DnsConfig",
    "DnsFilterConfig",
    "DnsSettings",
    "EnvConfig",
    "EnvSettings",
    "FeatureConfig",
    "FilterSpec",
    "FsConfig",
    "FsSettings",
    "IncomingConfig",
    "MirrordConfig",
    "NetworkConfig",
    "OutgoingConfig",
    "OutgoingFilterConfig",
    "OutgoingSettings",
    "TargetConfig",
    "submodels",
]


# --------------------------------------------------------------------------- building blocks


class _Section(BaseModel):
    """Base of every config object: strict types (``"yes"`` is not a boolean), no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False)

    @model_validator(mode="before")
    @classmethod
    def _null_means_unset(cls, data: Any) -> Any:
        # mirrord's file config is all Option<...>: `"key": null` is the same as leaving it out.
        # Only known keys are dropped so that a misspelt key with a null value is still reported.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (v is None and k in cls.model_fields)}
        return data


U16 = Annotated[int, Field(ge=0, le=0xFFFF)]
U32 = Annotated[int, Field(ge=0, le=0xFFFF_FFFF)]
U64 = Annotated[int, Field(ge=0, le=0xFFFF_FFFF_FFFF_FFFF)]
I32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
PortPair = Annotated[list[U16], Field(min_length=2, max_length=2)]


class _OrString:
    """JSON-schema marker: the value may also be written as a plain string."""

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"anyOf": [{"type": "string"}, handler(core_schema)]}


def _str_or_list(value: Any) -> Any:
    # mirrord's VecOrSingle: one string or a list of them.
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return value
    raise PydanticCustomError("str_or_list", "expected a string or a list of strings")


def _semicolon_list(value: Any) -> Any:
    # env include/exclude: mirrord joins the values with ';' and splits them again, so
    # "A;B" in a file means the two patterns A and B.
    if isinstance(value, str):
        return [part for part in value.split(";") if part]
    if isinstance(value, list):
        return [p for item in value for p in (item.split(";") if isinstance(item, str) else [item])]
    raise PydanticCustomError("str_or_list", "expected a string or a list of strings")


StrList = Annotated[list[str], BeforeValidator(_str_or_list), _OrString()]
PatternList = Annotated[list[str], BeforeValidator(_semicolon_list), _OrString()]


def _shape(value: Any) -> str | None:
    """Discriminator for the bool/string/object unions mirrord uses (its ToggleableConfig)."""
    if isinstance(value, bool):
        return "<bool>"
    if isinstance(value, str):
        return "<str>"
    if isinstance(value, dict | BaseModel):  # a model instance when serialising
        return "<object>"
    return None


def _toggle_error(what: str) -> Discriminator:
    return Discriminator(_shape, custom_error_type="shape", custom_error_message=f"expected {what}")


def _json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


# --------------------------------------------------------------------------------- target

# Object forms of a target path, e.g. {"pod": "x", "container": "c"} -> "pod/x/container/c".
_TARGET_KINDS = {
    "deployment": "deployment",
    "pod": "pod",
    "rollout": "rollout",
    "job": "job",
    "cron_job": "cronjob",
    "stateful_set": "statefulset",
    "service": "service",
    "replica_set": "replicaset",
}


def _target_object_to_path(obj: dict[str, Any]) -> str:
    kinds = [k for k in obj if k in _TARGET_KINDS or k == "labels"]
    unknown = [k for k in obj if k not in _TARGET_KINDS and k not in ("labels", "container")]
    if unknown or len(kinds) != 1:
        raise PydanticCustomError(
            "target",
            "expected a target path string or an object with exactly one of "
            "pod, deployment, rollout, job, cron_job, stateful_set, service, replica_set, "
            "labels (and optionally container); got keys {keys}",
            {"keys": ", ".join(map(_json, obj)) or "none"},
        )
    kind = kinds[0]
    container = obj.get("container")
    if container is not None and not isinstance(container, str):
        raise PydanticCustomError("target", "container: expected a string")
    value = obj[kind]
    if kind == "labels":
        if not isinstance(value, dict) or not value:
            raise PydanticCustomError("target", "labels: expected a non-empty object")
        if not all(isinstance(v, str) for v in value.values()):
            raise PydanticCustomError("target", "labels: expected string values")
        path = "label/" + ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    else:
        if not isinstance(value, str) or not value:
            raise PydanticCustomError("target", "{kind}: expected a name", {"kind": kind})
        path = f"{_TARGET_KINDS[kind]}/{value}"
    return path if container is None else f"{path}/container/{container}"


def _target_path_before(value: Any) -> Any:
    return _target_object_to_path(value) if isinstance(value, dict) else value


def _check_target_path(value: str) -> str:
    # Target types are not restricted here: this project adds its own (pid/, netns/) to
    # mirrord's; the shape "type/name[/...]" is what all of them share.
    if value == "targetless":
        return value
    kind, sep, rest = value.partition("/")
    if not kind or not sep or not rest.split("/", 1)[0]:
        raise PydanticCustomError(
            "target",
            'invalid target {target}: expected "targetless" or "<type>/<name>" '
            '(e.g. "pod/my-pod", "deployment/api/container/main", "pid/1234")',
            {"target": _json(value)},
        )
    return value


def _kind_schema(kind: str, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {kind: value, "container": {"type": ["string", "null"]}},
        "required": [kind],
        "additionalProperties": False,
    }


_TARGET_PATH_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "description": '"targetless" or "<type>/<name>[/container/<c>]"'},
        *(_kind_schema(kind, {"type": "string"}) for kind in _TARGET_KINDS),
        _kind_schema("labels", {"type": "object", "additionalProperties": {"type": "string"}}),
    ]
}

TargetPath = Annotated[
    str,
    BeforeValidator(_target_path_before),
    AfterValidator(_check_target_path),
    WithJsonSchema(_TARGET_PATH_SCHEMA),
]


class TargetConfig(_Section):
    """What to impersonate: ``path`` (``"pod/x"``, ``"targetless"``, ...) and its namespace."""

    path: TargetPath | None = None
    namespace: str | None = None


class _TargetSchema:
    """JSON-schema marker: ``target`` may also be a path string or a target-kind object."""

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"anyOf": [*_TARGET_PATH_SCHEMA["anyOf"], handler(core_schema)]}


def _target_before(value: Any) -> Any:
    if value is None:
        return {}
    if isinstance(value, str):
        return {"path": value}
    if isinstance(value, dict):
        # {"pod": "x"} at the top level is a path object, not {path, namespace}.
        if value and not set(value) <= {"path", "namespace"}:
            return {"path": value}
        return value
    raise PydanticCustomError("target", "expected a target path string or an object")


# ------------------------------------------------------------------------ feature.env


def _check_env_mapping(value: dict[str, str]) -> dict[str, str]:
    # mirrord compiles the patterns when it verifies the config (ConfigError::Regex).
    for pattern in value:
        try:
            compile_rust_regex(pattern)
        except re.error as err:
            raise PydanticCustomError(
                "regex",
                "invalid regular expression {pattern}: {reason}",
                {"pattern": _json(pattern), "reason": str(err)},
            ) from None
    return value


class EnvConfig(_Section):
    """``feature.env`` in object form."""

    include: PatternList | None = Field(
        default=None,
        description="Only these remote variables (`*`/`?` globs, list or ';'-separated).",
    )
    exclude: PatternList | None = Field(
        default=None,
        description="All remote variables but these (`*`/`?` globs, list or ';'-separated).",
    )
    override: dict[str, str] | None = Field(
        default=None,
        description="Set these variables locally; wins over remote, env file and mapping.",
    )
    load_from_process: bool | None = None
    unset: StrList | None = Field(
        default=None,
        description="Remove these variables from the app's environment (case-insensitive).",
    )
    env_file: str | None = Field(
        default=None,
        description="A .env file whose variables override the remote ones.",
    )
    mapping: Annotated[dict[str, str], AfterValidator(_check_env_mapping)] | None = Field(
        default=None,
        description="Regex on a variable's name -> the value it gets (remote and env-file "
        "variables).",
    )

    @model_validator(mode="after")
    def _include_xor_exclude(self) -> EnvConfig:
        # mirrord refuses the combination ("cannot use both `include` and `exclude`").
        if self.include is not None and self.exclude is not None:
            raise PydanticCustomError(
                "conflict", "cannot use both include and exclude: pick one of them"
            )
        return self


EnvField = Annotated[
    Annotated[bool, Tag("<bool>")] | Annotated[EnvConfig, Tag("<object>")],
    _toggle_error("true, false or an object"),
]


# ---------------------------------------------------------------- feature.network filters


def _check_outgoing_entry(value: str) -> str:
    try:
        parse_entry(value)
    except FilterError as err:
        raise PydanticCustomError("filter_entry", "{reason}", {"reason": str(err)}) from None
    return value


def _check_dns_entry(value: str) -> str:
    try:
        parse_entry(value, allow_protocol=False)
    except FilterError as err:
        raise PydanticCustomError("filter_entry", "{reason}", {"reason": str(err)}) from None
    return value


OutgoingEntries = Annotated[
    list[Annotated[str, AfterValidator(_check_outgoing_entry)]],
    BeforeValidator(_str_or_list),
    _OrString(),
]
DnsEntries = Annotated[
    list[Annotated[str, AfterValidator(_check_dns_entry)]],
    BeforeValidator(_str_or_list),
    _OrString(),
]


class _LocalOrRemote(_Section):
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
    def spec(self) -> FilterSpec:
        local: list[str] | None = getattr(self, "local", None)
        if local is not None:
            return FilterSpec("local", list(local))
        return FilterSpec("remote", list(getattr(self, "remote", None) or []))


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


class OutgoingConfig(_Section):
    """``feature.network.outgoing`` in object form."""

    tcp: bool = True
    udp: bool = True
    ignore_localhost: bool = False
    filter: OutgoingFilterConfig | None = None
    unix_streams: StrList | None = None


OutgoingField = Annotated[
    Annotated[bool, Tag("<bool>")] | Annotated[OutgoingConfig, Tag("<object>")],
    _toggle_error("true, false or an object"),
]


class DnsConfig(_Section):
    """``feature.network.dns`` in object form."""

    enabled: bool = True
    filter: DnsFilterConfig | None = None


DnsField = Annotated[
    Annotated[bool, Tag("<bool>")] | Annotated[DnsConfig, Tag("<object>")],
    _toggle_error("true, false or an object"),
]

IncomingMode = Literal["mirror", "steal", "off"]


class BodyFilter(_Section):
    body: Literal["json"]
    query: str
    matches: str


class HttpFilterConfig(_Section):
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


class TlsDeliveryConfig(_Section):
    protocol: Literal["tcp", "tls"]
    trust_roots: list[str] | None = None
    server_name: str | None = None
    server_cert: str | None = None


class IncomingConfig(_Section):
    """``feature.network.incoming`` in object form (accepted, not implemented yet)."""

    mode: IncomingMode | None = None
    http_filter: (
        Annotated[
            Annotated[bool, Tag("<bool>")] | Annotated[HttpFilterConfig, Tag("<object>")],
            _toggle_error("true, false or an object"),
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
    _toggle_error('true, false, "mirror", "steal", "off" or an object'),
]


class NetworkConfig(_Section):
    """``feature.network`` in object form."""

    incoming: IncomingField | None = None
    outgoing: OutgoingField = True
    dns: DnsField = True
    ipv6: bool | None = None


NetworkField = Annotated[
    Annotated[bool, Tag("<bool>")] | Annotated[NetworkConfig, Tag("<object>")],
    _toggle_error("true, false or an object"),
]


# ------------------------------------------------------------- other feature.* sections

FsMode = Literal["local", "localwithoverrides", "read", "write"]


def _check_fs_patterns(value: Any) -> Any:
    # compiled as the layer compiles them (fs_filter: Rust syntax translated, ignore case)
    for pattern in value:
        try:
            compile_fs_pattern(pattern)
        except re.error as err:
            raise PydanticCustomError(
                "regex",
                "invalid regular expression {pattern}: {reason}",
                {"pattern": _json(pattern), "reason": str(err)},
            ) from None
    return value


FsPatterns = Annotated[StrList, AfterValidator(_check_fs_patterns)]


class FsConfig(_Section):
    """``feature.fs`` in object form."""

    mode: FsMode | None = None
    read_write: FsPatterns | None = None
    read_only: FsPatterns | None = None
    local: FsPatterns | None = None
    not_found: FsPatterns | None = None
    mapping: Annotated[dict[str, str], AfterValidator(_check_fs_patterns)] | None = None
    readonly_file_buffer: U64 | None = None


FsField = Annotated[
    Annotated[bool, Tag("<bool>")]
    | Annotated[FsMode, Tag("<str>")]
    | Annotated[FsConfig, Tag("<object>")],
    _toggle_error('true, false, "local", "localwithoverrides", "read", "write" or an object'),
]


class CopyTargetConfig(_Section):
    enabled: bool | None = None
    scale_down: bool | None = None
    exclude_containers: list[str] | None = None
    exclude_init_containers: list[str] | None = None


CopyTargetField = Annotated[
    Annotated[bool, Tag("<bool>")] | Annotated[CopyTargetConfig, Tag("<object>")],
    _toggle_error("true, false or an object"),
]


class MagicConfig(_Section):
    aws: bool | None = None
    auto_mount: bool | None = None
    turbo: bool | None = None


class PreviewIdleConfig(_Section):
    start_idle: bool | None = None
    sleep_after_secs: U64 | None = None
    wake_timeout_secs: U64 | None = None


class PreviewLabelsConfig(_Section):
    include: StrList | None = None
    exclude: StrList | None = None


PreviewTtl = U64 | Literal["infinite"]


class PreviewConfig(_Section):
    image: str | None = None
    ttl_mins: PreviewTtl | None = None
    ttl_secs: PreviewTtl | None = None
    creation_timeout_secs: U64 | None = None
    replicas: I32 | None = None
    idle: PreviewIdleConfig | None = None
    labels: PreviewLabelsConfig | None = None
    config_mounts: list[dict[str, Any]] | None = None
    secret_mounts: list[dict[str, Any]] | None = None


class FeatureConfig(_Section):
    env: EnvField = True
    fs: FsField | None = None
    network: NetworkField = True
    copy_target: CopyTargetField | None = None
    hostname: bool | None = None
    magic: MagicConfig | None = None
    preview: PreviewConfig | None = None
    # Operator-only features with large nested schemas: shape-checked at the top only.
    split_queues: dict[str, dict[str, Any]] | list[dict[str, Any]] | None = None
    db_branches: list[dict[str, Any]] | None = None


# ------------------------------------------------------------------------------ agent


class AgentImageConfig(_Section):
    registry: str | None = None
    tag: str | None = None


class AgentPullSecret(_Section):
    name: str


class AgentDnsConfig(_Section):
    timeout: U32 | None = None
    attempts: U32 | None = None


class SecurityProfile(_Section):
    type: str
    localhost_profile: str | None = None


class SecurityContext(_Section):
    app_armor_profile: SecurityProfile | None = None
    seccomp_profile: SecurityProfile | None = None


AgentImageField = Annotated[
    Annotated[str, Tag("<str>")] | Annotated[AgentImageConfig, Tag("<object>")],
    _toggle_error("an image string or an object {registry, tag}"),
]


class AgentConfig(_Section):
    """``agent``: the agent pod of Kubernetes targets (``mirrord/kube/agent_spec.py``);
    ``ttl`` for local agents too. Keys not listed as implemented in the loader are
    type-checked only."""

    ttl: U16 = Field(default=1, description="Seconds the agent lingers after the session ends.")
    log_level: str | None = None
    json_log: bool | None = None
    namespace: str | None = None
    image: AgentImageField | None = None
    image_pull_policy: str | None = None
    image_pull_secrets: list[AgentPullSecret] | None = None
    ephemeral: bool | None = None
    communication_timeout: U16 | None = None
    startup_timeout: U64 | None = None
    flush_connections: bool | None = None
    disabled_capabilities: list[str] | None = None
    tolerations: list[dict[str, Any]] | None = None
    resources: dict[str, Any] | None = None
    check_out_of_pods: bool | None = None
    privileged: bool | None = None
    nftables: bool | None = None
    dns: AgentDnsConfig | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    node_selector: dict[str, str] | None = None
    service_account: str | None = None
    metrics: str | None = None
    exclude_from_mesh: bool | None = None
    disable_mesh_sidecar_injection: bool | None = None
    external_ip_fix: bool | None = None
    http_detection_timeout: U64 | None = None
    clean_iptables_on_start: bool | None = None
    priority_class: str | None = None
    security_context: SecurityContext | None = None
    inject_headers: bool | None = None
    max_body_buffer_size: U32 | None = None
    max_body_buffer_timeout: U32 | None = None
    override_cache_control: bool | None = None
    jaq_time_limit: U64 | None = None


# ------------------------------------------------------------------- other top-level keys


class ContainerConfig(_Section):
    cli_image: str | None = None
    cli_extra_args: list[str] | None = None
    cli_prevent_cleanup: bool | None = None
    cli_image_lib_path: str | None = None
    cli_tls_path: str | None = None
    override_host_ip: str | None = None
    host_gateway_detection: bool | None = None
    platform: str | None = None


class LatencyConfig(_Section):
    receive_delay: U64 | None = None
    transmit_delay: U64 | None = None


class ExperimentalConfig(_Section):
    tcp_ping4_mock: bool | None = None
    trust_any_certificate: bool | None = None
    enable_exec_hooks_linux: bool | None = None
    hide_ipv6_interfaces: bool | None = None
    disable_reuseaddr: bool | None = None
    use_dev_null: bool | None = None
    idle_local_http_connection_timeout: U64 | None = None
    ignore_system_proxy_config: bool | None = None
    browser_extension_config: bool | None = None
    sip_log_destination: str | None = None
    non_blocking_tcp_connect: bool | None = None
    dlopen_cgo: bool | None = None
    latency: LatencyConfig | None = None
    applev: dict[str, Any] | None = None
    sip_utils: bool | None = None
    go_asmcgocall: bool | None = None
    guard_std_fds: bool | None = None


class InternalProxyConfig(_Section):
    start_idle_timeout: U64 | None = None
    idle_timeout: U64 | None = None
    socket_timeout: U64 | None = None
    ping_interval: U64 | None = None
    log_level: str | None = None
    log_destination: str | None = None
    json_log: bool | None = None
    process_logging_interval: U64 | None = None


class ExternalProxyConfig(_Section):
    tls_enable: bool | None = None
    start_idle_timeout: U64 | None = None
    idle_timeout: U64 | None = None
    log_level: str | None = None
    log_destination: str | None = None
    json_log: bool | None = None
    host_ip: str | None = None


class CiConfig(_Section):
    output_dir: str | None = None


class StartupRetryConfig(_Section):
    min_ms: U64 | None = None
    max_ms: U64 | None = None
    max_retries: U32 | None = None


# --------------------------------------------------------------------- resolved settings


@dataclass(frozen=True)
class FilterSpec:
    """A local/remote filter: ``mode`` says what matching entries do."""

    mode: Literal["local", "remote"]
    entries: list[str]

    def to_settings(self) -> dict[str, Any]:
        return {"mode": self.mode, "entries": list(self.entries)}


@dataclass(frozen=True)
class OutgoingSettings:
    tcp: bool = True
    udp: bool = True
    ignore_localhost: bool = False
    filter: FilterSpec | None = None
    unix_streams: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class IncomingSettings:
    """``feature.network.incoming`` resolved (mode "off" when disabled)."""

    mode: str = "mirror"
    http_filter: dict[str, Any] | None = None
    port_mapping: list[list[int]] = field(default_factory=list)
    listen_ports: list[list[int]] = field(default_factory=list)
    ignore_ports: list[int] = field(default_factory=list)
    ports: list[int] | None = None
    ignore_localhost: bool = False

    def to_settings(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "http_filter": self.http_filter,
            "port_mapping": self.port_mapping,
            "listen_ports": self.listen_ports,
            "ignore_ports": self.ignore_ports,
            "ports": self.ports,
            "ignore_localhost": self.ignore_localhost,
        }


@dataclass(frozen=True)
class FsSettings:
    """``feature.fs`` resolved: true is mode "read", false is "local"."""

    mode: str = "read"
    read_write: list[str] = field(default_factory=list)
    read_only: list[str] = field(default_factory=list)
    local: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    mapping: dict[str, str] = field(default_factory=dict)
    readonly_file_buffer: int | None = None

    def to_settings(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "read_write": list(self.read_write),
            "read_only": list(self.read_only),
            "local": list(self.local),
            "not_found": list(self.not_found),
            "mapping": dict(self.mapping),
            "readonly_file_buffer": self.readonly_file_buffer,
        }


def resolve_fs(value: bool | str | FsConfig | None) -> FsSettings:
    """Normalise any form of ``feature.fs`` to :class:`FsSettings`."""
    if value is None or value is True:
        return FsSettings()
    if value is False:
        return FsSettings(mode="local")
    if isinstance(value, str):
        return FsSettings(mode=value)
    return FsSettings(
        mode=value.mode or "read",
        read_write=list(value.read_write or []),
        read_only=list(value.read_only or []),
        local=list(value.local or []),
        not_found=list(value.not_found or []),
        mapping=dict(value.mapping or {}),
        readonly_file_buffer=value.readonly_file_buffer,
    )


@dataclass(frozen=True)
class DnsSettings:
    enabled: bool = True
    filter: FilterSpec | None = None


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


# ------------------------------------------------------------------------------- root


class MirrordConfig(_Section):
    """The whole ``mirrord.json``.

    Build it with :func:`mirrord.config.load_config`, which also fills
    :attr:`unimplemented_keys`.
    """

    model_config = ConfigDict(title="mirrord")

    target: Annotated[TargetConfig, BeforeValidator(_target_before), _TargetSchema()] = Field(
        default_factory=TargetConfig
    )
    feature: FeatureConfig = Field(default_factory=FeatureConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    accept_invalid_certificates: bool | None = None
    skip_processes: StrList | None = None
    skip_build_tools: bool | None = None
    skip_extra_build_tools: StrList | None = None
    skip_sip: StrList | None = None
    sip_binaries: StrList | None = None
    operator: bool | None = None
    multi_cluster: bool | None = None
    api: bool | None = None
    profile: str | None = None
    kubeconfig: str | None = None
    kube_context: str | None = None
    telemetry: bool | None = None
    use_proxy: bool | None = None
    key: str | None = None
    traceparent: str | None = None
    baggage: str | None = None
    container: ContainerConfig | None = None
    experimental: ExperimentalConfig | None = None
    internal_proxy: InternalProxyConfig | None = None
    external_proxy: ExternalProxyConfig | None = None
    ci: CiConfig | None = None
    startup_retry: StartupRetryConfig | None = None

    _unimplemented_keys: list[str] = PrivateAttr(default_factory=list)

    @property
    def unimplemented_keys(self) -> list[str]:
        """Dotted paths that were set but that this project does not act on yet."""
        return list(self._unimplemented_keys)

    def _network(self) -> NetworkConfig | None:
        network = self.feature.network
        if network is False:
            return None
        return network if isinstance(network, NetworkConfig) else NetworkConfig()

    @property
    def incoming(self) -> IncomingSettings:
        """``feature.network.incoming`` resolved: true is "mirror", false is "off"."""
        network = self._network()
        section = network.incoming if network is not None else False
        if section is None or section is True:
            return IncomingSettings()
        if section is False:
            return IncomingSettings(mode="off")
        if isinstance(section, str):
            return IncomingSettings(mode=section)
        http_filter = section.http_filter
        return IncomingSettings(
            mode=section.mode or "mirror",
            http_filter=(
                http_filter.model_dump(exclude_none=True)
                if isinstance(http_filter, HttpFilterConfig)
                else None
            ),
            port_mapping=[list(pair) for pair in section.port_mapping or []],
            listen_ports=[list(pair) for pair in section.listen_ports or []],
            ignore_ports=list(section.ignore_ports or []),
            ports=None if section.ports is None else list(section.ports),
            ignore_localhost=bool(section.ignore_localhost),
        )

    @property
    def outgoing(self) -> OutgoingSettings:
        """``feature.network.outgoing`` resolved; disabled means ``tcp = udp = False``."""
        network = self._network()
        section = network.outgoing if network is not None else False
        if section is False:
            return OutgoingSettings(tcp=False, udp=False)
        if section is True:
            return OutgoingSettings()
        return OutgoingSettings(
            tcp=section.tcp,
            udp=section.udp,
            ignore_localhost=section.ignore_localhost,
            filter=None if section.filter is None else section.filter.spec,
            unix_streams=list(section.unix_streams or []),
        )

    @property
    def dns(self) -> DnsSettings:
        """``feature.network.dns`` resolved, with outgoing-filter host names reflected in it.

        Like mirrord, host names of an outgoing filter are resolved on the side that handles
        their connections: ``outgoing.filter.local = ["db.local"]`` implies
        ``dns.filter.local`` gets ``"db.local"`` too.
        """
        network = self._network()
        section = network.dns if network is not None else False
        if section is False:
            return DnsSettings(enabled=False)
        if section is True:
            section = DnsConfig()
        if not section.enabled:
            return DnsSettings(enabled=False)
        spec = None if section.filter is None else section.filter.spec
        return DnsSettings(enabled=True, filter=_reflect_outgoing_names(self.outgoing, spec))

    @property
    def env(self) -> EnvSettings:
        """``feature.env`` resolved."""
        return resolve_env(self.feature.env)

    @property
    def fs(self) -> FsSettings:
        """``feature.fs`` resolved."""
        return resolve_fs(self.feature.fs)

    def layer_settings(self) -> dict[str, Any]:
        """The JSON-serialisable settings the in-app layer reads (standard library only)."""
        outgoing, dns = self.outgoing, self.dns
        return {
            "outgoing": {
                "tcp": outgoing.tcp,
                "udp": outgoing.udp,
                "ignore_localhost": outgoing.ignore_localhost,
                "filter": None if outgoing.filter is None else outgoing.filter.to_settings(),
            },
            "dns": {
                "enabled": dns.enabled,
                "filter": None if dns.filter is None else dns.filter.to_settings(),
            },
            "incoming": self.incoming.to_settings(),
            "fs": self.fs.to_settings(),
        }


def _reflect_outgoing_names(
    outgoing: OutgoingSettings, dns: FilterSpec | None
) -> FilterSpec | None:
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
        return FilterSpec("local", names) if outgoing.filter.mode == "local" else None
    if dns.mode != outgoing.filter.mode:
        return dns
    merged = list(dns.entries)
    merged.extend(n for n in names if n not in merged)
    return FilterSpec(dns.mode, merged)


# ------------------------------------------------------------------- model introspection


def submodels(annotation: Any) -> list[type[BaseModel]]:
    """Config object classes a field's value may be (looking through Annotated/Union).

    Lists and dicts are leaves: a model inside ``list[...]`` is not returned.
    """
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return submodels(typing.get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        found: list[type[BaseModel]] = []
        for arg in typing.get_args(annotation):
            found.extend(m for m in submodels(arg) if m not in found)
        return found
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []
