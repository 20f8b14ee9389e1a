"""Running the user's program inside a session (the exec at the end of the CLI)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, NoReturn

from mirrord.config import ConfigError, MirrordConfig, load_config
from mirrord.config.verify import verify_config
from mirrord.errors import MirrordError
from mirrord.launch.environment import app_environment, read_file_vars
from mirrord.launch.program import is_python, no_layer_hint
from mirrord.launch.start import start_session


def _warn(message: str) -> None:
    print(f"mirrord: warning: {message}", file=sys.stderr)


def session_config(options: dict[str, Any]) -> MirrordConfig:
    """The config a session runs with (file < env < flags), its warnings printed."""
    from mirrord.cli.options import overrides_from

    try:
        cfg = load_config(options.get("config_file"), overrides=overrides_from(options))
        for warning in verify_config(cfg):
            _warn(warning)
    except ConfigError as exc:
        raise MirrordError(str(exc)) from None
    if cfg.unimplemented_keys:
        _warn(
            "these config keys are not implemented yet and are ignored: "
            + ", ".join(cfg.unimplemented_keys)
        )
    return cfg


def run_in_session(argv: list[str], options: dict[str, Any]) -> NoReturn:
    """Start the session, build the app's environment, and become the app."""
    cfg = session_config(options)
    program = shutil.which(argv[0]) or argv[0]
    if not Path(program).exists():
        raise MirrordError(f"no such program: {argv[0]}")
    file_vars = read_file_vars(cfg)
    session = start_session(
        cfg.target.path or "targetless",
        cfg.layer_settings(),
        config=cfg,
        log_level=options.get("log_level") or "info",
        # a program that is not Python was warned about already, up front
        no_layer_warning=no_layer_hint(argv) if is_python(argv[0]) else None,
    )
    env = app_environment(cfg, session, os.environ, file_vars)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(program, argv, env)
    except OSError as exc:
        raise MirrordError(f"cannot run {argv[0]}: {exc.strerror}") from None
