"""Entry point: `mirrord [options] script.py`, `mirrord exec -- cmd`, `mirrord demo`, ..."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from mirrord import __version__
from mirrord.cli.config_commands import schema_command, verify_config_command
from mirrord.cli.options import session_options
from mirrord.cli.targets import ls_command, port_forward_command
from mirrord.errors import MirrordError


@click.group()
@click.version_option(
    __version__, "-V", "--version", prog_name="mirrord", message="%(prog)s %(version)s"
)
def cli() -> None:
    """Run a local process as if it were inside your staging target."""


@cli.command(
    "run",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
@session_options
@click.option("-m", "module", help="run a module, as python -m does")
@click.argument("script_and_args", nargs=-1, type=click.UNPROCESSED)
def run_python(module: str | None, script_and_args: tuple[str, ...], **options: Any) -> None:
    """Run a Python script (or -m module) with mirrord: `mirrord [options] app.py [args]`."""
    from mirrord.cli.run import run_in_session

    if module:
        argv = [sys.executable, "-m", module, *script_and_args]
    elif script_and_args and script_and_args[0].startswith("-"):
        raise click.UsageError(f"no such option: {script_and_args[0]}")
    elif script_and_args:
        script = script_and_args[0]
        if not Path(script).is_file():
            raise MirrordError(f"no such script: {script}")
        argv = [sys.executable, *script_and_args]
    else:
        raise click.UsageError("name a script to run (or -m MODULE)")
    run_in_session(argv, options)


@cli.command(
    "exec",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
@session_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(command: tuple[str, ...], **options: Any) -> None:
    """Run any program with mirrord: `mirrord exec [options] -- program [args]`."""
    from mirrord.cli.run import run_in_session
    from mirrord.launch.native import exec_warning

    warning = exec_warning(command[0])
    if warning:
        click.echo(f"mirrord: warning: {warning}", err=True)
    run_in_session(list(command), options)


@cli.command("agent", context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def agent_command(args: tuple[str, ...]) -> None:
    """Run the agent (normally started by mirrord itself)."""
    _become("mirrord.agent", args)


@cli.command("intproxy", context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def intproxy_command(args: tuple[str, ...]) -> None:
    """Run the intproxy (normally started by mirrord itself)."""
    _become("mirrord.proxy", args)


def _become(module: str, args: tuple[str, ...]) -> NoReturn:
    """Be that helper process (the CLI does not import the processes it starts)."""
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", module, *args])


@cli.command("demo")
@click.option("--keep", is_flag=True, help="leave the lab up after the demo")
def demo_command(keep: bool) -> None:
    """Build the local staging lab and run an example app in it with mirrord."""
    from mirrord.cli.demo import run_demo

    sys.exit(run_demo(keep=keep))


cli.add_command(ls_command)
cli.add_command(port_forward_command)
cli.add_command(verify_config_command)
cli.add_command(schema_command)


def _with_default_command(argv: list[str]) -> list[str]:
    """`mirrord [options] app.py` means `mirrord run [options] app.py`."""
    if not argv or argv[0] in ("-h", "--help", "-V", "--version"):
        return argv
    if argv[0] in cli.commands:
        return argv
    return ["run", *argv]


def main(argv: list[str] | None = None) -> None:
    args = _with_default_command(list(sys.argv[1:] if argv is None else argv))
    try:
        cli.main(args=args, prog_name="mirrord", standalone_mode=False)
    except MirrordError as exc:
        click.echo(f"mirrord: {exc}", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
