"""``feature.fs``: the file policy's mode, regex lists and path mapping."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Tag

from mirrord.config.schema.base import U64, Section, StrList, regex_checker, toggle_error
from mirrord.settings.fs_filter import compile_pattern

FsMode = Literal["local", "localwithoverrides", "read", "write"]


# compiled as the layer compiles them (fs_filter: Rust syntax translated, ignore case)
FsPatterns = Annotated[StrList, regex_checker(compile_pattern)]


class FsConfig(Section):
    """``feature.fs`` in object form."""

    mode: FsMode | None = None
    read_write: FsPatterns | None = None
    read_only: FsPatterns | None = None
    local: FsPatterns | None = None
    not_found: FsPatterns | None = None
    mapping: Annotated[dict[str, str], regex_checker(compile_pattern)] | None = None
    readonly_file_buffer: U64 | None = None


FsField = Annotated[
    Annotated[bool, Tag("<bool>")]
    | Annotated[FsMode, Tag("<str>")]
    | Annotated[FsConfig, Tag("<object>")],
    toggle_error('true, false, "local", "localwithoverrides", "read", "write" or an object'),
]
