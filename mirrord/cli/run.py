"""Running the user's program inside a session (the exec at the end of the CLI)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from mirrord.cli.errors import CliError
from mirrord.cli.session import RunningSession, python_path_with_hook, start_session
from mirrord.config import ConfigError, MirrordConfig, load_config
from mirrord.config.env_file import EnvFileError, read_env_file
from mirrord.config.env_select import select_env, without_unset
from mirrord.config.verify import verify_config


def _warn(message: str) -> None:
    print(f"mirrord: warning: {message}", file=sys.stderr)


def run_in_session(argv: list[str], options: dict[str, Any]) -> NoReturn:
    """Start the session, build the app's environment, and become the app."""
    from mirrord.cli.options import overrides_from

    try:
        cfg = load_config(options.get("config_file"), overrides=overrides_from(options))
        for warning in verify_config(cfg):
            _warn(warning)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    if cfg.unimplemented_keys:
        _warn(
            "these config keys are not implemented yet and are ignored: "
            + ", ".join(cfg.unimplemented_keys)
        )
    program = shutil.which(argv[0]) or argv[0]
    if not Path(program).exists():
        raise CliError(f"no such program: {argv[0]}")
    file_vars = read_file_vars(cfg)
    session = start_session(
        cfg.target.path or "targetless",
        cfg.layer_settings(),
        log_level=options.get("log_level") or "info",
    )
    env = app_environment(cfg, session, os.environ, file_vars)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(program, argv, env)
    except OSError as exc:
        raise CliError(f"cannot run {argv[0]}: {exc.strerror}") from None


def read_file_vars(cfg: MirrordConfig) -> dict[str, str]:
    """feature.env.env_file, read before the session starts: a bad file costs no agent."""
    if not cfg.env.env_file:
        return {}
    try:
        return read_env_file(cfg.env.env_file, os.environ)
    except EnvFileError as exc:
        raise CliError(f"feature.env.env_file: {exc}") from None


def app_environment(
    cfg: MirrordConfig,
    session: RunningSession,
    local: Mapping[str, str],
    file_vars: Mapping[str, str],
) -> dict[str, str]:
    """The program's environment: local < the target's (selected) < env file < mapping <
    override, minus unset; plus what loads the layer into a Python program."""
    env = dict(local)
    if cfg.env.enabled:
        env.update(select_env(session.remote_env(), cfg.env, local, file_vars=dict(file_vars)))
    env = without_unset(env, cfg.env.unset)
    env.update(session.layer_env())
    env["PYTHONPATH"] = python_path_with_hook(env.get("PYTHONPATH"))
    return env
