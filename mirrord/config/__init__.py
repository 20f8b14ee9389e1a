"""mirrord configuration: the ``mirrord.json`` model, its loader and env selection.

Typical use::

    from mirrord.config import ConfigError, load_config

    cfg = load_config(None, overrides={"target": "pod/api"})
    cfg.outgoing, cfg.dns, cfg.env          # resolved settings
    cfg.layer_settings()                    # what the in-app layer gets
    cfg.unimplemented_keys                  # mirrord keys set but not acted on yet
"""

from mirrord.config.env_select import DEFAULT_EXCLUDES, select_env
from mirrord.config.errors import ConfigError
from mirrord.config.loader import DEFAULT_CONFIG_PATH, ENV_VARS, load_config
from mirrord.config.model import (
    DnsSettings,
    EnvSettings,
    FilterSpec,
    MirrordConfig,
    OutgoingSettings,
    TargetConfig,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_EXCLUDES",
    "ENV_VARS",
    "ConfigError",
    "DnsSettings",
    "EnvSettings",
    "FilterSpec",
    "MirrordConfig",
    "OutgoingSettings",
    "TargetConfig",
    "load_config",
    "select_env",
]
