"""Kubernetes objects as plain manifests (camelCase dicts, as in YAML) and as the client's
models: bodies are written as manifests and turned into models at the call."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar, cast

M = TypeVar("M", covariant=True)


class _Model(Protocol[M]):
    def from_dict(self, obj: dict[str, Any] | None) -> M | None: ...


def model(cls: _Model[M], manifest: Mapping[str, Any]) -> M:
    """A manifest as the client's model (unknown fields fail). Clients before 37 have no
    ``from_dict`` and take the dict itself."""
    from_dict = getattr(cls, "from_dict", None)
    if from_dict is None:
        return cast(M, dict(manifest))
    obj = from_dict(dict(manifest))
    assert obj is not None
    return cast(M, obj)


def to_dict(api: Any, obj: Any) -> dict[str, Any]:
    """A model (or a dict) as the API's JSON (camelCase keys); ``api`` is an ApiClient."""
    data = api.sanitize_for_serialization(obj)
    assert isinstance(data, dict)
    return data
