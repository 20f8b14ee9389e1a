"""Reading ``feature.env.env_file`` (a ``.env`` file) the way mirrord does.

mirrord reads the file with the dotenvy crate (0.15, ``dotenvy::from_path_iter`` in
``mirrord/cli/src/execution.rs``); this is a port of its parser so a file means the same here:

* ``KEY=value``, optionally ``export KEY=value``; keys start with a letter or ``_`` and
  contain letters, digits, ``_`` and ``.``; blank lines and ``#`` lines are skipped.
* unquoted values end at whitespace, after which only a ``# comment`` may follow;
  ``\\`` escapes the next character (``\\n`` is a newline);
* ``'single quotes'`` are literal; ``"double quotes"`` allow escapes and substitution;
  a quoted value may span several lines;
* ``$NAME`` / ``${NAME}`` substitute the *local* environment's value first, then a value
  defined earlier in the file, else the empty string.

Two deliberate differences, both where dotenvy fails by accident: it keeps the character
that ends a ``$NAME`` reference as text without interpreting it, so ``KEY="$HOME"`` is a
parse error there (the closing quote never closes the string), and it refuses a last line
that ends in blanks without a newline. Here both read as anyone would expect.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = ["EnvFileError", "parse_env_file", "read_env_file"]


class EnvFileError(ValueError):
    """A line of the file cannot be parsed; ``str()`` is one line naming file and line."""


class _LineState(enum.Enum):
    COMPLETE = enum.auto()
    ESCAPE = enum.auto()
    STRONG_OPEN = enum.auto()
    STRONG_OPEN_ESCAPE = enum.auto()
    WEAK_OPEN = enum.auto()
    WEAK_OPEN_ESCAPE = enum.auto()
    COMMENT = enum.auto()
    WHITESPACE = enum.auto()


def _end_state(state: _LineState, text: str) -> tuple[int, _LineState]:
    """dotenvy's ``eval_end_state``: is a (possibly multi-line) entry complete yet?"""
    S = _LineState
    position = 0
    for position, char in enumerate(text):
        if state is S.WHITESPACE:
            if char == "#":
                return position, S.COMMENT
            state = {"\\": S.ESCAPE, '"': S.WEAK_OPEN, "'": S.STRONG_OPEN}.get(char, S.COMPLETE)
        elif state is S.ESCAPE:
            state = S.COMPLETE
        elif state is S.COMPLETE:
            if char.isspace() and char not in "\n\r":
                state = S.WHITESPACE
            else:
                state = {"\\": S.ESCAPE, '"': S.WEAK_OPEN, "'": S.STRONG_OPEN}.get(char, S.COMPLETE)
        elif state is S.WEAK_OPEN:
            state = {"\\": S.WEAK_OPEN_ESCAPE, '"': S.COMPLETE}.get(char, S.WEAK_OPEN)
        elif state is S.WEAK_OPEN_ESCAPE:
            state = S.WEAK_OPEN
        elif state is S.STRONG_OPEN:
            state = {"\\": S.STRONG_OPEN_ESCAPE, "'": S.COMPLETE}.get(char, S.STRONG_OPEN)
        elif state is S.STRONG_OPEN_ESCAPE:
            state = S.STRONG_OPEN
    return position, state


def _entries(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each entry; quoted values may continue over lines."""
    pieces = [piece + "\n" for piece in text.split("\n")]
    pieces[-1] = pieces[-1][:-1]
    if not pieces[-1]:
        pieces.pop()
    buffer, state, start = "", _LineState.COMPLETE, 0
    for number, piece in enumerate(pieces, 1):
        if not buffer:
            start = number
        offset = len(buffer)
        buffer += piece
        if buffer.lstrip().startswith("#"):
            buffer, state = "", _LineState.COMPLETE
            continue
        position, state = _end_state(state, buffer[offset:])
        if state is _LineState.COMPLETE:
            yield start, buffer.removesuffix("\n").removesuffix("\r")
            buffer = ""
        elif state is _LineState.COMMENT:
            yield start, buffer[: offset + position]
            buffer, state = "", _LineState.COMPLETE
    if buffer and state is _LineState.WHITESPACE:
        # Trailing blanks on a last line without a newline: dotenvy fails here, which is
        # only an accident of its line reader.
        yield start, buffer
    elif buffer:
        raise _ParseError(start, buffer.rstrip("\n"), len(buffer))


class _ParseError(Exception):
    def __init__(self, line: int, text: str, column: int) -> None:
        super().__init__(line, text, column)
        self.line, self.text, self.column = line, text, column


class _Subst(enum.Enum):
    NONE = enum.auto()
    BLOCK = enum.auto()  # $NAME
    BRACED = enum.auto()  # ${NAME}


def _substitute(name: str, environ: Mapping[str, str], seen: Mapping[str, str]) -> str:
    # dotenvy looks in the process environment first, then at earlier lines of the file.
    if name in environ:
        return environ[name]
    return seen.get(name, "")


def _parse_value(text: str, line: int, environ: Mapping[str, str], seen: Mapping[str, str]) -> str:
    strong = weak = escaped = expecting_end = False
    output: list[str] = []
    mode, name = _Subst.NONE, ""

    for index, char in enumerate(text):
        if mode is not _Subst.NONE:
            if char.isalnum() or (mode is _Subst.BRACED and char != "}"):
                name += char
                continue
            if mode is _Subst.BLOCK and char == "{" and not name:
                mode = _Subst.BRACED
                continue
            output.append(_substitute(name, environ, seen))
            braced = mode is _Subst.BRACED
            mode, name = _Subst.NONE, ""
            if braced:
                continue  # the closing brace belongs to the reference
            # A bare $NAME ends here; the character is read normally below.
        if expecting_end:
            if char in " \t":
                continue
            if char == "#":
                break
            raise _ParseError(line, text, index)
        if escaped:
            if char in "\\'\"$ ":
                output.append(char)
            elif char == "n":
                output.append("\n")
            else:
                raise _ParseError(line, text, index)
            escaped = False
        elif strong:
            if char == "'":
                strong = False
            else:
                output.append(char)
        elif char == "$":
            mode = _Subst.BLOCK
        elif weak:
            if char == '"':
                weak = False
            elif char == "\\":
                escaped = True
            else:
                output.append(char)
        elif char == "'":
            strong = True
        elif char == '"':
            weak = True
        elif char == "\\":
            escaped = True
        elif char in " \t":
            expecting_end = True
        else:
            output.append(char)

    if mode is _Subst.BRACED or strong or weak:
        raise _ParseError(line, text, max(len(text) - 1, 0))
    if mode is _Subst.BLOCK:
        output.append(_substitute(name, environ, seen))
    return "".join(output)


def _is_key_start(char: str) -> bool:
    return char.isascii() and (char.isalpha() or char == "_")


def _key_length(text: str) -> int:
    for index, char in enumerate(text):
        if not (char.isascii() and (char.isalnum() or char in "_.")):
            return index
    return len(text)


def _parse_entry(
    entry: str, line: int, environ: Mapping[str, str], seen: dict[str, str]
) -> tuple[str, str] | None:
    entry = entry.rstrip()
    rest = entry.lstrip()
    if not rest or rest.startswith("#"):
        return None

    def key_from(text: str) -> tuple[str, str]:
        if not text or not _is_key_start(text[0]):
            raise _ParseError(line, entry, len(entry) - len(text))
        length = _key_length(text)
        return text[:length], text[length:].lstrip()

    def after_equal(text: str) -> str:
        if not text.startswith("="):
            raise _ParseError(line, entry, len(entry) - len(text))
        return text[1:].lstrip()

    key, rest = key_from(rest)
    if key == "export" and not rest.startswith("="):  # `export` may also be a key itself
        key, rest = key_from(rest)
    rest = after_equal(rest)
    if not rest or rest.startswith("#"):
        seen[key] = ""
        return key, ""
    try:
        value = _parse_value(rest, line, environ, seen)
    except _ParseError as err:
        raise _ParseError(line, entry, len(entry) - len(rest) + err.column) from None
    seen[key] = value
    return key, value


def parse_env_file(
    text: str, environ: Mapping[str, str], *, source: str = "env file"
) -> dict[str, str]:
    """The variables ``text`` defines; later definitions of a name win (as mirrord's
    ``extend`` does). ``environ`` is consulted for ``$NAME`` substitution."""
    text = text.removeprefix("\ufeff")
    result: dict[str, str] = {}
    seen: dict[str, str] = {}
    try:
        for line, entry in _entries(text):
            parsed = _parse_entry(entry, line, environ, seen)
            if parsed is not None:
                result[parsed[0]] = parsed[1]
    except _ParseError as err:
        snippet = err.text.split("\n", 1)[0]
        if len(snippet) > 60:
            snippet = snippet[:57] + "..."
        raise EnvFileError(
            f"{source}:{err.line}: cannot parse {snippet!r} (at character {err.column + 1})"
        ) from None
    return result


def read_env_file(path: str | Path, environ: Mapping[str, str]) -> dict[str, str]:
    """Read and parse the file at ``path`` (relative to the current directory, as in mirrord)."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EnvFileError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise EnvFileError(f"{name}: is a directory") from None
    except UnicodeDecodeError:
        raise EnvFileError(f"{name}: not valid UTF-8 text") from None
    except OSError as err:
        raise EnvFileError(f"{name}: {err.strerror or err}") from None
    return parse_env_file(text, environ, source=name)
