"""Options shared by `python -m mirrord` and `mirrord exec`, named as in mirrord."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

# `--fs-mode` values: mirrord's clap `FsMode` value names (kebab-case) -> the config's mode.
_FS_MODES = {
    "read": "read",
    "write": "write",
    "local": "local",
    "local-with-overrides": "localwithoverrides",
    "localwithoverrides": "localwithoverrides",  # the config spelling, accepted too
}


def session_options(func: Callable[..., Any]) -> Callable[..., Any]:
    decorators = [
        click.option(
            "-t",
            "--target",
            help="pod/NAME[/container/C], deployment/NAME, statefulset/, rollout/, replicaset/, "
            "job/, cronjob/, service/, pid/PID, netns/NAME or targetless",
        ),
        click.option(
            "-n", "--target-namespace", help="the target's Kubernetes namespace (target.namespace)"
        ),
        click.option("-a", "--agent-namespace", help="where the agent pod runs (agent.namespace)"),
        click.option("--context", help="kubeconfig context to use (kube_context)"),
        click.option(
            "-e",
            "--ephemeral-container",
            is_flag=True,
            help="run the agent as an ephemeral container of the target pod (agent.ephemeral)",
        ),
        click.option(
            "-f",
            "--config-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help="mirrord config file (JSON, TOML or YAML); default .mirrord/mirrord.json",
        ),
        click.option(
            "--fs-mode",
            type=click.Choice(list(_FS_MODES)),
            help="default file system behaviour (feature.fs.mode)",
        ),
        click.option(
            "--env-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help=".env file whose variables override the remote ones (feature.env.env_file)",
        ),
        click.option(
            "--steal",
            is_flag=True,
            help="steal incoming traffic instead of mirroring it (feature.network.incoming)",
        ),
        click.option("--no-remote-dns", is_flag=True, help="resolve names locally"),
        click.option("--no-outgoing", is_flag=True, help="keep all outgoing traffic local"),
        click.option("--no-tcp-outgoing", is_flag=True, help="keep outgoing TCP local"),
        click.option("--no-udp-outgoing", is_flag=True, help="keep outgoing UDP local"),
        click.option(
            "-x",
            "--override-env-vars-exclude",
            help="remote env vars to leave out (;-separated, * and ? globs)",
        ),
        click.option(
            "-s",
            "--override-env-vars-include",
            help="only these remote env vars (;-separated, * and ? globs)",
        ),
        click.option(
            "--log-level",
            default="info",
            type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
            help="log level of agent and intproxy",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def overrides_from(options: dict[str, Any]) -> dict[str, Any]:
    """Config overrides (dotted key paths) from the CLI flags that were given."""
    result: dict[str, Any] = {}
    if options.get("target"):
        result["target"] = options["target"]
    if options.get("target_namespace"):
        result["target.namespace"] = options["target_namespace"]
    if options.get("agent_namespace"):
        result["agent.namespace"] = options["agent_namespace"]
    if options.get("context"):
        result["kube_context"] = options["context"]
    if options.get("ephemeral_container"):
        result["agent.ephemeral"] = True
    if options.get("no_remote_dns"):
        result["feature.network.dns.enabled"] = False
    if options.get("no_outgoing") or options.get("no_tcp_outgoing"):
        result["feature.network.outgoing.tcp"] = False
    if options.get("no_outgoing") or options.get("no_udp_outgoing"):
        result["feature.network.outgoing.udp"] = False
    if options.get("override_env_vars_exclude") is not None:
        result["feature.env.exclude"] = options["override_env_vars_exclude"]
    if options.get("override_env_vars_include") is not None:
        result["feature.env.include"] = options["override_env_vars_include"]
    if options.get("fs_mode"):
        result["feature.fs.mode"] = _FS_MODES[options["fs_mode"]]
    if options.get("env_file") is not None:
        result["feature.env.env_file"] = str(options["env_file"])
    if options.get("steal"):
        # mirrord sets MIRRORD_AGENT_TCP_STEAL_TRAFFIC, which replaces the mode in any form.
        result["feature.network.incoming.mode"] = "steal"
    return result
