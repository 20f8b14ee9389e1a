"""Where the layer comes from: the sitecustomize hook and the code it imports.

In a wheel the hook is the package `mirrord._hook`; in a checkout (editable install) it is
the folder sitecustomize_hook/ beside the package. The app may run in another
environment that has no mirrord, wrapt or msgpack: the hook then imports exactly those
three from where this mirrord found them, and nothing else of our environment.
"""

from __future__ import annotations

import os
from pathlib import Path

from mirrord.errors import MirrordError

#: The packages the layer needs inside the app (msgpack and wrapt fall back to pure
#: Python where their compiled parts do not fit the app's interpreter).
LAYER_PACKAGES = ("mirrord", "msgpack", "wrapt")
LAYER_PATH_ENV = "MIRRORD_LAYER_PATH"
HOOK_FILE = "sitecustomize.py"


def hook_dir() -> Path:
    """The folder to put first on an app's PYTHONPATH."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "_hook", package.parent / "sitecustomize_hook"):
        if (candidate / HOOK_FILE).is_file():
            return candidate
    raise MirrordError(
        f"this installation of mirrord lacks its layer hook ({package / '_hook' / HOOK_FILE}): "
        "reinstall it (pip install --force-reinstall mirrord-py)"
    )


def layer_path() -> str:
    """`os.pathsep`-separated `name=folder` pairs: where each layer package lives here."""
    import msgpack
    import wrapt

    import mirrord

    pairs = []
    for module in (mirrord, msgpack, wrapt):
        assert module.__file__ is not None
        pairs.append(f"{module.__name__}={Path(module.__file__).resolve().parent.parent}")
    return os.pathsep.join(pairs)


def python_path_with_hook(current: str | None) -> str:
    parts = [str(hook_dir())] + [p for p in (current or "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(parts))
