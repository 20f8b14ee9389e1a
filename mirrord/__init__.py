"""mirrord for Python: run a local process as if it were inside a staging pod.

This package is imported inside the user's app by the layer, so its top level stays
light: only the standard library is imported here; the faces load when first named.
"""

from mirrord.errors import AgentFailed, ConfigInvalid, MirrordError, NotRoot, TargetNotFound

__version__ = "0.1.0"
__all__ = [
    "AgentFailed",
    "AsyncSession",
    "ConfigInvalid",
    "MirrordError",
    "NotRoot",
    "Session",
    "TargetNotFound",
    "__version__",
    "live",
    "load_ipython_extension",
]

#: name -> the module that holds it, imported on first use
_LAZY = {
    "Session": "mirrord.api.session",
    "AsyncSession": "mirrord.api.async_session",
    "live": "mirrord.api.notebook",
    "load_ipython_extension": "mirrord.api.notebook",
}


def __getattr__(name: str) -> object:
    # lazy: the layer imports this package inside apps, where pydantic must not load
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(module), name)
