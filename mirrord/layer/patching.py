"""Patch families: each wraps a set of attributes with wrapt and can undo exactly that.

Runs inside the user's app: standard library and wrapt only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import wrapt

Wrapper = Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]
_MISSING = object()


class PatchFamily:
    """Subclasses list `(module, "attr.path", wrapper)` in `patches()`."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, Any]] = []

    def patches(self) -> list[tuple[str, str, Wrapper]]:
        raise NotImplementedError

    @property
    def installed(self) -> bool:
        return bool(self._undo)

    def install(self) -> None:
        """Wrap every attribute of `patches()`, or none: a failure undoes what was done."""
        if self._undo:
            return
        try:
            for module_name, path, wrapper in self.patches():
                owner: Any = importlib.import_module(module_name)
                *parents, name = path.split(".")
                for parent in parents:
                    owner = getattr(owner, parent)
                # remember whether the attribute was the owner's own or inherited
                previous = (
                    owner.__dict__.get(name, _MISSING) if hasattr(owner, "__dict__") else _MISSING
                )
                wrapt.wrap_function_wrapper(owner, name, wrapper)
                self._undo.append((owner, name, previous))
        except BaseException:
            self.uninstall()
            raise

    def uninstall(self) -> None:
        while self._undo:
            owner, name, previous = self._undo.pop()
            if previous is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, previous)
