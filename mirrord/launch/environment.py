"""The environment a program runs with under a session, built as mirrord's CLI builds it."""

from __future__ import annotations

import os
from collections.abc import Mapping

from mirrord.config import MirrordConfig
from mirrord.config.env_file import EnvFileError, read_env_file
from mirrord.config.env_select import select_env, without_unset
from mirrord.errors import MirrordError
from mirrord.launch.hook import hook_dir, python_path_with_hook
from mirrord.launch.native import native_env
from mirrord.launch.start import RunningSession


def read_file_vars(cfg: MirrordConfig) -> dict[str, str]:
    """feature.env.env_file, read before the session starts: a bad file costs no agent."""
    if not cfg.env.env_file:
        return {}
    try:
        return read_env_file(cfg.env.env_file, os.environ)
    except EnvFileError as exc:
        raise MirrordError(f"feature.env.env_file: {exc}") from None


def app_environment(
    cfg: MirrordConfig,
    session: RunningSession,
    local: Mapping[str, str],
    file_vars: Mapping[str, str],
) -> dict[str, str]:
    """The program's environment: local < the target's (selected) < env file < mapping <
    override, minus unset; plus what loads the layer into a Python program and the
    native relay into any program."""
    env = dict(local)
    if cfg.env.enabled:
        env.update(select_env(session.remote_env(), cfg.env, local, file_vars=dict(file_vars)))
    env = without_unset(env, cfg.env.unset)
    env.update(session.layer_env())
    env["PYTHONPATH"] = python_path_with_hook(env.get("PYTHONPATH"))
    env.update(native_env(cfg, session.layer_settings, hook_dir(), env))
    return env
