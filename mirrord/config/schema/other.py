"""mirrord's other top-level sections: accepted and type-checked, not acted on yet."""

from __future__ import annotations

from typing import Any

from mirrord.config.schema.base import U32, U64, Section


class ContainerConfig(Section):
    cli_image: str | None = None
    cli_extra_args: list[str] | None = None
    cli_prevent_cleanup: bool | None = None
    cli_image_lib_path: str | None = None
    cli_tls_path: str | None = None
    override_host_ip: str | None = None
    host_gateway_detection: bool | None = None
    platform: str | None = None


class LatencyConfig(Section):
    receive_delay: U64 | None = None
    transmit_delay: U64 | None = None


class ExperimentalConfig(Section):
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


class InternalProxyConfig(Section):
    start_idle_timeout: U64 | None = None
    idle_timeout: U64 | None = None
    socket_timeout: U64 | None = None
    ping_interval: U64 | None = None
    log_level: str | None = None
    log_destination: str | None = None
    json_log: bool | None = None
    process_logging_interval: U64 | None = None


class ExternalProxyConfig(Section):
    tls_enable: bool | None = None
    start_idle_timeout: U64 | None = None
    idle_timeout: U64 | None = None
    log_level: str | None = None
    log_destination: str | None = None
    json_log: bool | None = None
    host_ip: str | None = None


class CiConfig(Section):
    output_dir: str | None = None


class StartupRetryConfig(Section):
    min_ms: U64 | None = None
    max_ms: U64 | None = None
    max_retries: U32 | None = None
