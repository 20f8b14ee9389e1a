"""``feature.env``: which of the target's variables the app gets, and what is changed."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, Tag, model_validator
from pydantic_core import PydanticCustomError

from mirrord.config.schema.base import PatternList, Section, StrList, regex_checker, toggle_error
from mirrord.settings.rust_regex import compile_rust_regex


class EnvConfig(Section):
    """``feature.env`` in object form."""

    include: PatternList | None = Field(
        default=None,
        description="Only these remote variables (`*`/`?` globs, list or ';'-separated).",
    )
    exclude: PatternList | None = Field(
        default=None,
        description="All remote variables but these (`*`/`?` globs, list or ';'-separated).",
    )
    override: dict[str, str] | None = Field(
        default=None,
        description="Set these variables locally; wins over remote, env file and mapping.",
    )
    load_from_process: bool | None = None
    unset: StrList | None = Field(
        default=None,
        description="Remove these variables from the app's environment (case-insensitive).",
    )
    env_file: str | None = Field(
        default=None,
        description="A .env file whose variables override the remote ones.",
    )
    # mirrord compiles the patterns when it verifies the config (ConfigError::Regex)
    mapping: Annotated[dict[str, str], regex_checker(compile_rust_regex)] | None = Field(
        default=None,
        description="Regex on a variable's name -> the value it gets (remote and env-file "
        "variables).",
    )

    @model_validator(mode="after")
    def _include_xor_exclude(self) -> EnvConfig:
        # mirrord refuses the combination ("cannot use both `include` and `exclude`").
        if self.include is not None and self.exclude is not None:
            raise PydanticCustomError(
                "conflict", "cannot use both include and exclude: pick one of them"
            )
        return self


EnvField = Annotated[
    Annotated[bool, Tag("<bool>")] | Annotated[EnvConfig, Tag("<object>")],
    toggle_error("true, false or an object"),
]
