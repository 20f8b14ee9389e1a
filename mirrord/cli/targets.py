"""`mirrord ls`: the targets a session can take, in the cluster and on this host;
`mirrord port-forward`: ports through a target (mirrord/launch/port_forward.py).

Output as mirrord's: `-o json` is a list of target paths (what the IDE plugins read);
with `MIRRORD_LS_RICH_OUTPUT=true` an object with the current namespace and all of them.
Text (one target a line) is the default in a terminal, JSON otherwise.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from mirrord.cli.options import session_options
from mirrord.errors import MirrordError
from mirrord.targets.path import KUBE_KINDS, LOCAL_KINDS

RICH_OUTPUT_ENV = "MIRRORD_LS_RICH_OUTPUT"


def local_targets() -> list[str]:
    """Named network namespaces of this host (`ip netns`)."""
    try:
        return [f"netns/{p.name}" for p in sorted(Path("/run/netns").iterdir())]
    except OSError:
        return []


def _cluster_wanted(options: dict[str, Any], cfg: Any) -> bool:
    """Look in a cluster when one is named or kubectl has a kubeconfig."""
    if options.get("namespace") or options.get("all_namespaces") or options.get("context"):
        return True
    if cfg.kubeconfig or cfg.kube_context or cfg.target.namespace:
        return True
    files = os.environ.get("KUBECONFIG", "") or str(Path("~/.kube/config").expanduser())
    return any(Path(f).is_file() for f in files.split(os.pathsep) if f)


@click.command("ls")
@click.option("-n", "--namespace", help="the namespace to list (default: the context's)")
@click.option("-A", "--all-namespaces", is_flag=True, help="list every namespace")
@click.option(
    "-o", "--output", type=click.Choice(["text", "json"]), help="default: text in a terminal"
)
@click.option(
    "-t",
    "--target-type",
    "types",
    multiple=True,
    type=click.Choice([*KUBE_KINDS, "netns"]),  # pid/ targets are not listed
    help="only targets of this kind (repeatable)",
)
@click.option("-f", "--config-file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--context", help="kubeconfig context to use (kube_context)")
def ls_command(**options: Any) -> None:
    """List the targets: pods, deployments, rollouts, ... and this host's namespaces."""
    from mirrord.config import ConfigError, load_config

    overrides = {"target.namespace": options["namespace"], "kube_context": options["context"]}
    try:
        cfg = load_config(options["config_file"], overrides=overrides)
    except ConfigError as exc:
        raise MirrordError(str(exc)) from None
    types = tuple(options["types"])
    kube_kinds = tuple(t for t in types if t not in LOCAL_KINDS)
    found: list[tuple[str | None, str]] = []
    current: str | None = None
    namespaces: list[str] = []
    if (not types or kube_kinds) and _cluster_wanted(options, cfg):
        from mirrord.kube.client import KubeAccess, connect
        from mirrord.kube.listing import KINDS, list_namespaces, list_targets

        cluster = connect(KubeAccess(cfg.kubeconfig, cfg.kube_context))
        current = cfg.target.namespace or cluster.namespace
        where = None if options["all_namespaces"] else current
        found += list_targets(cluster.api, where, kube_kinds or KINDS)
        if os.environ.get(RICH_OUTPUT_ENV, "").lower() in ("1", "true"):
            namespaces = list_namespaces(cluster.api)
    if not types or "netns" in types:
        found += [(None, t) for t in local_targets()]
    _print(found, options, current, namespaces)


def _print(
    found: list[tuple[str | None, str]],
    options: dict[str, Any],
    current: str | None,
    namespaces: list[str],
) -> None:
    output = options["output"] or ("text" if sys.stdout.isatty() else "json")
    every = options["all_namespaces"]
    if output == "text":
        for ns, target in found:
            click.echo(f"{ns or '-':30} {target}" if every else target)
        return
    if every:
        click.echo(json.dumps([{"namespace": ns, "path": t} for ns, t in found]))
    elif os.environ.get(RICH_OUTPUT_ENV, "").lower() in ("1", "true"):
        targets = [{"path": t, "available": True} for _, t in found]
        doc = {"targets": targets, "current_namespace": current, "namespaces": namespaces}
        click.echo(json.dumps(doc))
    else:
        click.echo(json.dumps([t for _, t in found]))


@click.command("port-forward")
@session_options
@click.option(
    "-L",
    "--local",
    "local_forwards",
    multiple=True,
    metavar="[LOCAL_PORT:]REMOTE_HOST:REMOTE_PORT",
    help="a local port to an address as the target reaches it (repeatable)",
)
@click.option(
    "-R",
    "--remote",
    "remote_forwards",
    multiple=True,
    metavar="[REMOTE_PORT:]LOCAL_PORT",
    help="the target's port, stolen or mirrored, to a local port (repeatable)",
)
def port_forward_command(
    local_forwards: tuple[str, ...], remote_forwards: tuple[str, ...], **options: Any
) -> None:
    """Forward ports through the target: `-L 5432:db.staging.svc:5432 -R 8080:9000`."""
    import signal
    import threading

    from mirrord.cli.run import session_config
    from mirrord.launch.port_forward import LocalForward, PortForwarder, RemoteForward
    from mirrord.launch.processes import alive, stop
    from mirrord.launch.start import start_session

    locals_ = [LocalForward.parse(text) for text in local_forwards]
    remotes = [RemoteForward.parse(text) for text in remote_forwards]
    if not locals_ and not remotes:
        raise click.UsageError("name at least one -L or -R forward")
    cfg = session_config(options)
    session = start_session(
        cfg.target.path or "targetless",
        cfg.layer_settings(),
        config=cfg,
        log_level=options.get("log_level") or "info",
    )
    incoming = cfg.incoming
    forwarder = PortForwarder(
        session.proxy_socket, session.proxy_token, incoming.mode, incoming.http_filter
    )
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    try:
        for forward in locals_:
            try:
                forwarder.local(forward)
            except OSError as exc:
                raise MirrordError(
                    f"-L: cannot listen on 127.0.0.1:{forward.local_port}: {exc.strerror}"
                ) from None
            click.echo(f"mirrord: forwarding {forward}", err=True)
        for remote in remotes:
            forwarder.remote(remote)
            click.echo(
                f"mirrord: the target's port {remote.remote_port} -> 127.0.0.1:"
                f"{remote.local_port} ({forwarder.incoming_mode})",
                err=True,
            )
        click.echo("mirrord: port-forward ready (Ctrl-C ends it)", err=True)
        while not done.wait(0.5):
            if not alive(session.proxy_pid):
                raise MirrordError("the session's intproxy is gone: the port-forward ends")
    finally:
        forwarder.close()
        stop(session.proxy_pid)
