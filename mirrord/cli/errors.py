"""Errors the CLI reports as one line, never as a traceback."""


class CliError(Exception):
    """Printed as `mirrord: <message>`; exit status 1."""
