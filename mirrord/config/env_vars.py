"""``MIRRORD_*`` variables: which key each one sets, and how its text becomes a value."""

from __future__ import annotations

import json
import re
from typing import Any

from mirrord.config.errors import ConfigError

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


def parse_env_value(name: str, dotted: str, kind: str, raw: str) -> Any:
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
