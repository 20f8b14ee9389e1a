"""mirrord's hook: loaded by Python at start-up because the CLI put this folder first on
PYTHONPATH. Loads the layer, then runs the sitecustomize it shadows, if any."""

import importlib.machinery
import importlib.util
import os
import sys


def _mirrord_start():
    here = os.path.dirname(os.path.abspath(__file__))
    # the CLI names where mirrord, wrapt and msgpack live, for apps in other environments
    for extra in filter(None, os.environ.get("MIRRORD_LAYER_PATH", "").split(os.pathsep)):
        if extra not in sys.path:
            sys.path.append(extra)
    try:
        from mirrord.layer import bootstrap

        bootstrap.start()
    except Exception as exc:  # the app must run even if mirrord cannot help
        print(f"mirrord: layer not loaded: {exc}", file=sys.stderr)
    # chain to the next sitecustomize on the path, as if we were not here
    others = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)


_mirrord_start()
del _mirrord_start
