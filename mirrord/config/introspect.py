"""Walking the config model's classes: which objects a key may hold, which keys were set.

The loader uses it to suggest a key for a misspelt one and to list the keys a file sets
that this project does not act on yet.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Union

from pydantic import BaseModel

from mirrord.config.schema.root import MirrordConfig

KeyPath = tuple[str | int, ...]


def submodels(annotation: Any) -> list[type[BaseModel]]:
    """Config object classes a field's value may be (looking through Annotated/Union).

    Lists and dicts are leaves: a model inside ``list[...]`` is not returned.
    """
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return submodels(typing.get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        found: list[type[BaseModel]] = []
        for arg in typing.get_args(annotation):
            found.extend(m for m in submodels(arg) if m not in found)
        return found
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _list_items(annotation: Any) -> list[Any]:
    """Item types of the list types inside ``annotation`` (through Annotated/Union)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _list_items(typing.get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [item for arg in typing.get_args(annotation) for item in _list_items(arg)]
    if origin is list:
        return list(typing.get_args(annotation)[:1])
    return []


def fields_at(path: KeyPath) -> list[str]:
    """Field names of the config object at ``path`` (for "did you mean")."""
    annotations: list[Any] = [MirrordConfig]
    for part in path:
        if isinstance(part, int):
            annotations = [item for a in annotations for item in _list_items(a)]
            continue
        annotations = [
            model.model_fields[part].annotation
            for a in annotations
            for model in submodels(a)
            if part in model.model_fields
        ]
    names: list[str] = []
    for annotation in annotations:
        for model in submodels(annotation):
            names.extend(n for n in model.model_fields if n not in names)
    return names


def leaf_paths(
    tree: Mapping[str, Any], model: type[BaseModel] = MirrordConfig, prefix: KeyPath = ()
) -> Iterator[tuple[KeyPath, Any]]:
    """Dotted paths actually set in ``tree`` (following config objects, not maps/lists)."""
    for key, value in tree.items():
        if value is None:
            continue
        key_path = (*prefix, key)
        info = model.model_fields.get(key)
        candidates = submodels(info.annotation) if info is not None else []
        if isinstance(value, dict) and candidates:
            if not value:
                continue  # an empty section sets nothing
            for sub in candidates:
                if set(value) <= set(sub.model_fields):
                    yield from leaf_paths(value, sub, key_path)
                    break
            else:
                yield key_path, value
        else:
            yield key_path, value
