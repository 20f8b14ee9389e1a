"""What every config object shares: strict sections, integer widths, list and toggle forms.

Key names, shapes and defaults follow mirrord's own config (``mirrord/config/src`` in
metalbear-co/mirrord). Every object rejects unknown keys. A ``null`` for a known key means
"not set" (as mirrord's ``Option`` fields do), so the default applies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError


class Section(BaseModel):
    """Base of every config object: strict types (``"yes"`` is not a boolean), no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False)

    @model_validator(mode="before")
    @classmethod
    def _null_means_unset(cls, data: Any) -> Any:
        # mirrord's file config is all Option<...>: `"key": null` is the same as leaving it out.
        # Only known keys are dropped so that a misspelt key with a null value is still reported.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (v is None and k in cls.model_fields)}
        return data


U16 = Annotated[int, Field(ge=0, le=0xFFFF)]
U32 = Annotated[int, Field(ge=0, le=0xFFFF_FFFF)]
U64 = Annotated[int, Field(ge=0, le=0xFFFF_FFFF_FFFF_FFFF)]
I32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
PortPair = Annotated[list[U16], Field(min_length=2, max_length=2)]


class OrString:
    """JSON-schema marker: the value may also be written as a plain string."""

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"anyOf": [{"type": "string"}, handler(core_schema)]}


def str_or_list(value: Any) -> Any:
    # mirrord's VecOrSingle: one string or a list of them.
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return value
    raise PydanticCustomError("str_or_list", "expected a string or a list of strings")


def _semicolon_list(value: Any) -> Any:
    # env include/exclude: mirrord joins the values with ';' and splits them again, so
    # "A;B" in a file means the two patterns A and B.
    if isinstance(value, str):
        return [part for part in value.split(";") if part]
    if isinstance(value, list):
        return [p for item in value for p in (item.split(";") if isinstance(item, str) else [item])]
    raise PydanticCustomError("str_or_list", "expected a string or a list of strings")


StrList = Annotated[list[str], BeforeValidator(str_or_list), OrString()]
PatternList = Annotated[list[str], BeforeValidator(_semicolon_list), OrString()]


def _shape(value: Any) -> str | None:
    """Discriminator for the bool/string/object unions mirrord uses (its ToggleableConfig)."""
    if isinstance(value, bool):
        return "<bool>"
    if isinstance(value, str):
        return "<str>"
    if isinstance(value, dict | BaseModel):  # a model instance when serialising
        return "<object>"
    return None


def toggle_error(what: str) -> Discriminator:
    return Discriminator(_shape, custom_error_type="shape", custom_error_message=f"expected {what}")


def quoted(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def regex_checker(compile_pattern: Callable[[str], Any]) -> AfterValidator:
    """A validator that compiles every pattern (keys of a mapping) as its reader will."""

    def check(value: Any) -> Any:
        for pattern in value:
            try:
                compile_pattern(pattern)
            except re.error as err:
                raise PydanticCustomError(
                    "regex",
                    "invalid regular expression {pattern}: {reason}",
                    {"pattern": quoted(pattern), "reason": str(err)},
                ) from None
        return value

    return AfterValidator(check)
