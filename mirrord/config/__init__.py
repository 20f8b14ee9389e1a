"""mirrord configuration: the ``mirrord.json`` model, its loader and env selection.

Typical use::

    from mirrord.config import ConfigError, load_config

    cfg = load_config(None, overrides={"target": "pod/api"})
    cfg.outgoing, cfg.dns, cfg.env          # resolved settings
    cfg.layer_contract()                    # what the in-app layer gets
    cfg.layer_settings()                    # ... as the JSON object it reads
    cfg.unimplemented_keys                  # mirrord keys set but not acted on yet
"""

from mirrord.config.env_select import DEFAULT_EXCLUDES, select_env
from mirrord.config.errors import ConfigError
from mirrord.config.loader import DEFAULT_CONFIG_PATH, ENV_VARS, load_config
from mirrord.config.resolved import EnvSettings, FilterSpec
from mirrord.config.schema import MirrordConfig, TargetConfig
from mirrord.settings.contract import (
    DnsSettings,
    FsSettings,
    IncomingSettings,
    LayerSettings,
    OutgoingSettings,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_EXCLUDES",
    "ENV_VARS",
    "ConfigError",
    "DnsSettings",
    "EnvSettings",
    "FilterSpec",
    "FsSettings",
    "IncomingSettings",
    "LayerSettings",
    "MirrordConfig",
    "OutgoingSettings",
    "TargetConfig",
    "load_config",
    "select_env",
]
