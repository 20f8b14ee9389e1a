"""The whole ``mirrord.json``, and its resolved views."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Field, PrivateAttr

from mirrord.config.resolved import (
    EnvSettings,
    resolve_dns,
    resolve_env,
    resolve_fs,
    resolve_incoming,
    resolve_outgoing,
)
from mirrord.config.schema.agent import AgentConfig
from mirrord.config.schema.base import Section, StrList
from mirrord.config.schema.feature import FeatureConfig
from mirrord.config.schema.other import (
    CiConfig,
    ContainerConfig,
    ExperimentalConfig,
    ExternalProxyConfig,
    InternalProxyConfig,
    StartupRetryConfig,
)
from mirrord.config.schema.target import TargetConfig, TargetSchema, target_before
from mirrord.settings.contract import (
    DnsSettings,
    FsSettings,
    IncomingSettings,
    LayerSettings,
    OutgoingSettings,
)


class MirrordConfig(Section):
    """The whole ``mirrord.json``.

    Build it with :func:`mirrord.config.load_config`, which also fills
    :attr:`unimplemented_keys`.
    """

    model_config = ConfigDict(title="mirrord")

    target: Annotated[TargetConfig, BeforeValidator(target_before), TargetSchema()] = Field(
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

    @property
    def incoming(self) -> IncomingSettings:
        """``feature.network.incoming`` resolved: true is "mirror", false is "off"."""
        return resolve_incoming(self.feature)

    @property
    def outgoing(self) -> OutgoingSettings:
        """``feature.network.outgoing`` resolved; disabled means ``tcp = udp = False``."""
        return resolve_outgoing(self.feature)

    @property
    def dns(self) -> DnsSettings:
        """``feature.network.dns`` resolved, with outgoing-filter host names reflected in it."""
        return resolve_dns(self.feature)

    @property
    def env(self) -> EnvSettings:
        """``feature.env`` resolved."""
        return resolve_env(self.feature.env)

    @property
    def fs(self) -> FsSettings:
        """``feature.fs`` resolved."""
        return resolve_fs(self.feature.fs)

    def layer_contract(self) -> LayerSettings:
        """What the in-app layer gets (``MIRRORD_LAYER_SETTINGS``, standard library only)."""
        return LayerSettings(
            outgoing=self.outgoing, dns=self.dns, incoming=self.incoming, fs=self.fs
        )

    def layer_settings(self) -> dict[str, Any]:
        """:meth:`layer_contract` as the JSON object the layer reads."""
        return self.layer_contract().to_dict()
