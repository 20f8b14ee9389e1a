"""Compiling the regular expressions mirrord's config holds (Rust ``regex``/``fancy_regex``
syntax) with Python's ``re``. Standard library only: the layer uses it inside apps (fs
patterns), the config model outside (env mapping).

The two dialects agree on nearly everything users write; the differences that do show up in
configs are translated: POSIX classes inside brackets (``[[:alpha:]]``, used in mirrord's own
``feature.env.mapping`` tests), ``\\z`` for end of text and ``(?<name>...)`` groups.
"""

from __future__ import annotations

import re
import warnings
from functools import lru_cache

__all__ = ["compile_rust_regex", "translate"]

# Rust's POSIX classes are ASCII-only.
_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7F",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1F\\x7F",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
_POSIX = re.compile(r"\[:(" + "|".join(_POSIX_CLASSES) + r"):\]")
_NAMED_GROUP = re.compile(r"\(\?<(?=[A-Za-z_])")
_END_OF_TEXT = re.compile(r"(?<!\\)((?:\\\\)*)\\z")


def translate(pattern: str) -> str:
    """``pattern``, a Rust regex, in Python's syntax."""
    translated = _POSIX.sub(lambda m: _POSIX_CLASSES[m.group(1)], pattern)
    translated = _NAMED_GROUP.sub("(?P<", translated)
    return _END_OF_TEXT.sub(r"\1\\Z", translated)


@lru_cache(maxsize=256)
def compile_rust_regex(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """``re.compile`` of ``pattern`` read as a Rust regex; ``re.error`` if it is invalid."""
    with warnings.catch_warnings():
        # "possible nested set" warnings are about syntax Rust reads differently; the
        # translation covers the cases that matter, the rest compile as Python reads them.
        warnings.simplefilter("ignore", FutureWarning)
        return re.compile(translate(pattern), flags)
