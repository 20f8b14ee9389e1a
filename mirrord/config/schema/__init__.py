"""Pydantic models of mirrord's configuration tree (``mirrord.json``), one module a section.

Key names, shapes and defaults follow mirrord's own config (``mirrord/config/src`` in
metalbear-co/mirrord). Sections that mirrord lets you write as ``true``/``false`` or as an
object are kept in that form here; :class:`MirrordConfig`'s resolved accessors
(``outgoing``, ``dns``, ``incoming``, ``fs``, ``env``; ``mirrord.config.resolved``) turn them
into plain settings objects.
"""

from mirrord.config.schema.agent import AgentConfig
from mirrord.config.schema.env import EnvConfig
from mirrord.config.schema.feature import CopyTargetConfig, FeatureConfig
from mirrord.config.schema.fs import FsConfig
from mirrord.config.schema.network import (
    DnsConfig,
    DnsFilterConfig,
    HttpFilterConfig,
    IncomingConfig,
    NetworkConfig,
    OutgoingConfig,
    OutgoingFilterConfig,
)
from mirrord.config.schema.root import MirrordConfig
from mirrord.config.schema.target import TargetConfig

__all__ = [
    "AgentConfig",
    "CopyTargetConfig",
    "DnsConfig",
    "DnsFilterConfig",
    "EnvConfig",
    "FeatureConfig",
    "FsConfig",
    "HttpFilterConfig",
    "IncomingConfig",
    "MirrordConfig",
    "NetworkConfig",
    "OutgoingConfig",
    "OutgoingFilterConfig",
    "TargetConfig",
]
