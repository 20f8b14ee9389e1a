"""Where each key of a config file is: its line, for error messages (JSON, TOML, YAML).

None of the three parsers keeps positions, so each locator walks the text (or YAML's node
tree) once more. Best effort: a key not found falls back to its closest ancestor's line.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from json.decoder import scanstring  # type: ignore[attr-defined]  # not in the stubs

import yaml

KeyPath = tuple[str | int, ...]
Positions = dict[KeyPath, int]
Duplicates = list[tuple[KeyPath, int]]
#: The line of a key path, or None.
Locator = Callable[[KeyPath], "int | None"]


def no_position(_key_path: KeyPath) -> int | None:
    return None


def locator(positions: Positions) -> Locator:
    def locate(key_path: KeyPath) -> int | None:
        # The closest recorded ancestor: a bad list item falls back to its key's line.
        for end in range(len(key_path), 0, -1):
            line = positions.get(key_path[:end])
            if line is not None:
                return line
        return None

    return locate


_JSON_WS = re.compile(r"[ \t\n\r]*")
_JSON_SCALAR = re.compile(
    r"(?:-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|true|false|null)"
)


def locate_json(text: str) -> tuple[Positions, Duplicates]:
    """Line of every key and list item of (already validated) JSON, plus duplicate keys.

    The standard json module keeps no positions, so this walks the text once more.
    """
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    positions: dict[KeyPath, int] = {}
    duplicates: list[tuple[KeyPath, int]] = []

    def line_of(index: int) -> int:
        return bisect.bisect_right(line_starts, index)

    def skip(i: int) -> int:
        match = _JSON_WS.match(text, i)
        return match.end() if match else i

    def value(i: int, path: KeyPath) -> int:
        i = skip(i)
        char = text[i]
        if char == "{":
            seen: set[str] = set()
            i = skip(i + 1)
            if text[i] == "}":
                return i + 1
            while True:
                i = skip(i)
                key, end = scanstring(text, i + 1)
                key_path = (*path, key)
                if key in seen:
                    duplicates.append((key_path, line_of(i)))
                seen.add(key)
                positions.setdefault(key_path, line_of(i))
                i = skip(end) + 1  # past ':'
                i = skip(value(i, key_path))
                if text[i] == ",":
                    i += 1
                    continue
                return i + 1
        if char == "[":
            i = skip(i + 1)
            if text[i] == "]":
                return i + 1
            index = 0
            while True:
                i = skip(i)
                positions.setdefault((*path, index), line_of(i))
                i = skip(value(i, (*path, index)))
                index += 1
                if text[i] == ",":
                    i += 1
                    continue
                return i + 1
        if char == '"':
            return scanstring(text, i + 1)[1]
        match = _JSON_SCALAR.match(text, i)
        return match.end() if match else i + 1

    try:
        value(0, ())
    except (IndexError, ValueError, RecursionError):
        pass  # positions are best effort; the data itself came from json.loads
    return positions, duplicates


_TOML_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_TOML_KEY = rf"{_TOML_KEY_PART}(?:\s*\.\s*{_TOML_KEY_PART})*"
_TOML_TABLE = re.compile(rf"^\s*\[\[?\s*({_TOML_KEY})\s*\]\]?")
_TOML_ASSIGN = re.compile(rf"^\s*({_TOML_KEY})\s*=")


def _split_toml_key(key: str) -> KeyPath:
    parts = re.findall(_TOML_KEY_PART, key)
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in parts)


def locate_toml(text: str) -> dict[KeyPath, int]:
    # Best effort: tomllib keeps no positions; table headers and `key =` lines cover
    # ordinary config files (inline tables and multi-line values map to their first line).
    positions: dict[KeyPath, int] = {}
    table: KeyPath = ()
    for lineno, line in enumerate(text.splitlines(), 1):
        if match := _TOML_TABLE.match(line):
            table = _split_toml_key(match.group(1))
            for end in range(1, len(table) + 1):
                positions.setdefault(table[:end], lineno)
        elif match := _TOML_ASSIGN.match(line):
            key = table + _split_toml_key(match.group(1))
            for end in range(len(table) + 1, len(key) + 1):
                positions.setdefault(key[:end], lineno)
    return positions


def locate_yaml(root: yaml.Node | None) -> tuple[Positions, Duplicates]:
    """Line of every key and list item of a composed YAML document, plus duplicate keys."""
    positions: Positions = {}
    duplicates: Duplicates = []

    def walk(node: yaml.Node | None, path: KeyPath) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                line = key_node.start_mark.line + 1
                if key in seen:
                    duplicates.append(((*path, key), line))
                seen.add(key)
                positions.setdefault((*path, key), line)
                walk(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                positions.setdefault((*path, index), item.start_mark.line + 1)
                walk(item, (*path, index))

    walk(root, ())
    return positions, duplicates
