"""`mirrord verify-config` and `mirrord schema`: the config file without starting a session.

`verify-config` prints the JSON report mirrord's own command prints
(`mirrord/cli/src/verify_config.rs` in metalbear-co/mirrord), which the IDE plugins read:

    {"type": "Success", "config": {"path": ..., "namespace": ...}, "warnings": [...],
     "compatible_target_types": [...], "resolved_config": {...}}
    {"type": "Fail", "errors": ["..."]}

With `--ide` it behaves exactly as mirrord's: exit status 0 and nothing on stderr in both
cases, since the plugins treat any stderr output or a non-zero status as "mirrord itself
failed" and would not show the errors. Without `--ide` (a person at a terminal) a failure also
prints the one-line error on stderr and exits 1, and the report includes the resolved config.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from mirrord.config import ConfigError, MirrordConfig

# mirrord.config (pydantic) is imported inside the functions: `mirrord agent` and
# `mirrord intproxy` start through the same entry point and do not need it.

__all__ = ["json_schema", "schema_command", "verification_report", "verify_config_command"]

# Target path kind -> the key of mirrord's target object (`PodTarget { pod, container }`...).
_TARGET_FIELDS = {
    "pod": "pod",
    "deployment": "deployment",
    "rollout": "rollout",
    "job": "job",
    "cronjob": "cron_job",
    "statefulset": "stateful_set",
    "service": "service",
    "replicaset": "replica_set",
}

# mirrord's `TargetType::all()`, in its order (label targets are not listed there).
_TARGET_TYPES = (
    "targetless",
    "pod",
    "deployment",
    "rollout",
    "job",
    "cronjob",
    "statefulset",
    "service",
    "replicaset",
)


def _verified_target(path: str | None) -> Any:
    """mirrord's `VerifiedTarget`: "targetless", or the target as an object."""
    if path is None or path == "targetless":
        return path
    kind, _, rest = path.partition("/")
    name, _, container_part = rest.partition("/container/")
    container = container_part or None
    if kind == "label":
        labels = dict(item.split("=", 1) for item in name.split(",") if "=" in item)
        target: dict[str, Any] = {"labels": labels}
        if container is not None:  # LabelTarget skips a missing container
            target["container"] = container
        return target
    # This project's own local kinds (pid/, netns/) take the same shape under their own key.
    return {_TARGET_FIELDS.get(kind, kind): name, "container": container}


def _compatible_target_types(cfg: MirrordConfig) -> list[str]:
    # mirrord's TargetType::compatible_with: copy_target rules out some kinds.
    from mirrord.config.schema import CopyTargetConfig

    copy = cfg.feature.copy_target
    if isinstance(copy, CopyTargetConfig):
        enabled = copy.enabled is not False  # the object form means enabled by default
        scale_down = bool(copy.scale_down)
    else:
        enabled, scale_down = copy is True, False
    incompatible: set[str] = set()
    if enabled:
        incompatible |= {"targetless", "rollout", "service"}
        if scale_down:
            incompatible.add("pod")
    return [kind for kind in _TARGET_TYPES if kind not in incompatible]


def _resolved(cfg: MirrordConfig) -> dict[str, Any]:
    """The config with defaults filled in, in a shape `-f` accepts again."""
    return cfg.model_dump(mode="json", exclude_none=True)


def verification_report(
    path: str | Path, *, ide: bool = False, resolved: bool = False
) -> tuple[dict[str, Any], ConfigError | None]:
    """mirrord's `VerifiedConfig` for the file at ``path`` (``MIRRORD_*`` variables apply
    too, as in mirrord), and the error when it is a failure.

    ``ide``: a config without a target is not final (the IDE asks for one), so checks that
    need to know whether the run is targetless do not apply to it.
    """
    from mirrord.config import ConfigError, load_config
    from mirrord.config.verify import verify_config

    try:
        cfg = load_config(path)
    except ConfigError as err:
        return {"type": "Fail", "errors": [str(err)]}, err
    try:
        warnings = verify_config(cfg, empty_target_final=not ide)
    except ConfigError as err:
        # A conflict between keys has no single line; name the file being verified.
        err = ConfigError(err.message, source=err.source or str(path), key=err.key)
        return {"type": "Fail", "errors": [str(err)]}, err
    if cfg.unimplemented_keys:
        warnings.append(
            "these config keys are not implemented yet and are ignored: "
            + ", ".join(cfg.unimplemented_keys)
        )
    report: dict[str, Any] = {
        "type": "Success",
        "config": {
            "path": _verified_target(cfg.target.path),
            "namespace": cfg.target.namespace,
        },
        "warnings": warnings,
        "compatible_target_types": _compatible_target_types(cfg),
    }
    if resolved:
        report["resolved_config"] = _resolved(cfg)
    return report, None


@click.command("verify-config")
@click.option("--ide", is_flag=True, hidden=True, help="report for IDE plugins (always exit 0)")
@click.option("--resolved", is_flag=True, help="include the config with all defaults")
@click.option(
    "-f",
    "--config-file",
    "config_file",
    type=click.Path(path_type=Path),
    help="the config file (the same as PATH)",
)
@click.argument("path", required=False, type=click.Path(path_type=Path))
def verify_config_command(
    ide: bool, resolved: bool, config_file: Path | None, path: Path | None
) -> None:
    """Check a config file without starting mirrord; print the result as JSON.

    PATH (or -f) defaults to .mirrord/mirrord.json.
    """
    if path is not None and config_file is not None and path != config_file:
        raise click.UsageError("give the config file either as PATH or with -f, not both")
    from mirrord.config.loader import DEFAULT_CONFIG_PATH

    target = path or config_file or DEFAULT_CONFIG_PATH
    report, error = verification_report(target, ide=ide, resolved=resolved or not ide)
    click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    if error is not None and not ide:
        click.echo(f"mirrord: {error}", err=True)
        sys.exit(1)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of mirrord.json (draft 2020-12), for editors."""
    from mirrord.config import MirrordConfig

    schema = MirrordConfig.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


@click.command("schema")
def schema_command() -> None:
    """Print the JSON Schema of the config file (for editor completion)."""
    click.echo(json.dumps(json_schema(), indent=2, ensure_ascii=False))
