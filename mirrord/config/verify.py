"""Checks across sections of a loaded config, after each section validated on its own.

These follow ``LayerConfig::verify`` in mirrord (``mirrord/config/src/lib.rs``), which both
``mirrord exec`` and ``mirrord verify-config`` run: a conflict is an error, a questionable
combination a warning. Only the checks about keys this project reads are here; checks about
one section alone live on that section's model.
"""

from __future__ import annotations

from mirrord.config.errors import ConfigError
from mirrord.config.schema import MirrordConfig

__all__ = ["verify_config"]


def verify_config(cfg: MirrordConfig, *, empty_target_final: bool = True) -> list[str]:
    """Raise :class:`ConfigError` for a conflict; return the warnings.

    ``empty_target_final``: whether a config without a target means "targetless" (a run) or
    "target still to be chosen" (an IDE asks the user later; ``verify-config --ide``).
    """
    warnings: list[str] = []
    path = cfg.target.path
    targetless = path == "targetless" or (path is None and empty_target_final)

    if targetless and cfg.incoming.mode == "steal":
        raise ConfigError(
            "steal mode is not compatible with a targetless agent, please either disable "
            "this option or specify a target",
            key="feature.network.incoming.mode",
        )
    if targetless and cfg.agent.ephemeral:
        raise ConfigError(
            "using an ephemeral container for the agent is not compatible with a targetless "
            "agent, please either disable this option or specify a target",
            key="agent.ephemeral",
        )

    outgoing_filter = cfg.outgoing.filter
    if outgoing_filter is not None and outgoing_filter.mode == "remote" and not cfg.dns.enabled:
        warnings.append(
            "the outgoing traffic filter includes hosts to be connected remotely, but the "
            "remote DNS feature is disabled, so their names will be resolved locally; "
            "consider enabling feature.network.dns"
        )
    return warnings
