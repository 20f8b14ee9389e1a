"""``agent``: only ``ttl`` is acted on so far; the rest is mirrord's, type-checked."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, Tag

from mirrord.config.schema.base import U16, U32, U64, Section, toggle_error


class AgentImageConfig(Section):
    registry: str | None = None
    tag: str | None = None


class AgentPullSecret(Section):
    name: str


class AgentDnsConfig(Section):
    timeout: U32 | None = None
    attempts: U32 | None = None


class SecurityProfile(Section):
    type: str
    localhost_profile: str | None = None


class SecurityContext(Section):
    app_armor_profile: SecurityProfile | None = None
    seccomp_profile: SecurityProfile | None = None


AgentImageField = Annotated[
    Annotated[str, Tag("<str>")] | Annotated[AgentImageConfig, Tag("<object>")],
    toggle_error("an image string or an object {registry, tag}"),
]


class AgentConfig(Section):
    """``agent``: the agent pod of Kubernetes targets (``mirrord/kube/agent_spec.py``);
    ``ttl`` for local agents too. Keys not listed in ``implemented.py`` are type-checked
    only."""

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
