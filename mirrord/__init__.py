"""mirrord for Python: run a local process as if it were inside a staging pod.

This package is imported inside the user's app by the layer, so its top level stays
light: only the standard library is imported here.
"""

from mirrord.errors import MirrordError

__version__ = "0.1.0"
__all__ = ["MirrordError", "Session", "__version__"]


def __getattr__(name: str) -> object:
    # lazy: the layer imports this package inside apps, where pydantic must not load
    if name == "Session":
        from mirrord.api import session

        return getattr(session, name)
    raise AttributeError(name)
