"""Load ``mirrord.json`` (or .toml/.yaml), ``MIRRORD_*`` variables and CLI overrides.

Precedence, lowest first: config file < ``MIRRORD_*`` environment variables < overrides.
Every problem becomes a one-line :class:`~mirrord.config.errors.ConfigError` naming the source
(file and, where it can be found, the line), the dotted key path and what is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mirrord.config.env_vars import ENV_VARS, parse_env_value
from mirrord.config.errors import ConfigError, to_config_error
from mirrord.config.formats import read_file
from mirrord.config.implemented import unimplemented_keys
from mirrord.config.merge import ENV, FILE, OVERRIDE, Origin, add_layer, plain, split_key, tree_at
from mirrord.config.positions import KeyPath, Locator, no_position
from mirrord.config.schema import MirrordConfig

__all__ = ["DEFAULT_CONFIG_PATH", "ENV_VARS", "load_config"]

DEFAULT_CONFIG_PATH = Path(".mirrord") / "mirrord.json"


def load_config(
    path: Path | str | None = None,
    *,
    env: Mapping[str, str] = os.environ,
    overrides: Mapping[str, Any] | None = None,
) -> MirrordConfig:
    """Load the configuration: file < ``MIRRORD_*`` variables in ``env`` < ``overrides``.

    ``path`` ``None`` means ``.mirrord/mirrord.json`` in the current directory if it exists,
    else no file. ``overrides`` maps dotted key paths to values, e.g.
    ``{"target": "netns/x", "feature.network.dns.enabled": False}``; a ``None`` value is
    skipped, so unset CLI options can be passed straight through.
    """
    if path is None and DEFAULT_CONFIG_PATH.is_file():
        path = DEFAULT_CONFIG_PATH

    merged: dict[str, Any] = {}
    origins: dict[KeyPath, Origin] = {}
    layers: list[dict[str, Any]] = []
    locate: Locator = no_position

    if path is not None:
        tree, locate = read_file(Path(path), str(path))
        add_layer(merged, origins, layers, tree, Origin(FILE, str(path)))

    for name, (dotted, kind) in ENV_VARS.items():
        raw = env.get(name)
        if raw is None or raw == "":  # an empty variable counts as unset
            continue
        value = parse_env_value(name, dotted, kind, raw)
        add_layer(merged, origins, layers, tree_at(split_key(dotted), value), Origin(ENV, name))

    for dotted, value in (overrides or {}).items():
        if value is None:  # "not given" (e.g. an unset CLI option), not "reset"
            continue
        if not isinstance(dotted, str) or not all(split_key(dotted)):
            raise ConfigError(f"invalid key path {dotted!r}", source="command-line override")
        tree = tree_at(split_key(dotted), plain(value))
        add_layer(merged, origins, layers, tree, Origin(OVERRIDE, dotted))

    try:
        cfg = MirrordConfig.model_validate(merged)
    except ValidationError as err:
        raise to_config_error(err, origins, locate) from None
    cfg._unimplemented_keys = unimplemented_keys(layers)
    return cfg
