"""``feature``: the sections this project acts on and mirrord's operator-only ones."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Tag

from mirrord.config.schema.base import I32, U64, Section, StrList, toggle_error
from mirrord.config.schema.env import EnvField
from mirrord.config.schema.fs import FsField
from mirrord.config.schema.network import NetworkField


class CopyTargetConfig(Section):
    enabled: bool | None = None
    scale_down: bool | None = None
    exclude_containers: list[str] | None = None
    exclude_init_containers: list[str] | None = None


CopyTargetField = Annotated[
    Annotated[bool, Tag("<bool>")] | Annotated[CopyTargetConfig, Tag("<object>")],
    toggle_error("true, false or an object"),
]


class MagicConfig(Section):
    aws: bool | None = None
    auto_mount: bool | None = None
    turbo: bool | None = None


class PreviewIdleConfig(Section):
    start_idle: bool | None = None
    sleep_after_secs: U64 | None = None
    wake_timeout_secs: U64 | None = None


class PreviewLabelsConfig(Section):
    include: StrList | None = None
    exclude: StrList | None = None


PreviewTtl = U64 | Literal["infinite"]


class PreviewConfig(Section):
    image: str | None = None
    ttl_mins: PreviewTtl | None = None
    ttl_secs: PreviewTtl | None = None
    creation_timeout_secs: U64 | None = None
    replicas: I32 | None = None
    idle: PreviewIdleConfig | None = None
    labels: PreviewLabelsConfig | None = None
    config_mounts: list[dict[str, Any]] | None = None
    secret_mounts: list[dict[str, Any]] | None = None


class FeatureConfig(Section):
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
