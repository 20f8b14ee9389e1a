"""Errors mirrord reports as one readable line, never as a traceback."""


class MirrordError(RuntimeError):
    """A session could not start or went wrong; the CLI prints `mirrord: <message>` and
    exits with status 1, the library raises it."""
