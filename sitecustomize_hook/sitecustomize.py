"""mirrord's hook: loaded by Python at start-up because the CLI put this folder first on
PYTHONPATH. Loads the layer, then runs the sitecustomize it shadows, if any."""

import importlib.machinery
import importlib.util
import os
import sys


class _LayerPackages:
    """Finds only mirrord, msgpack and wrapt, where the CLI's own environment has them
    (MIRRORD_LAYER_PATH: name=folder pairs), so an app of another environment can load the
    layer without seeing anything else of ours. mirrord comes first (it must match the
    intproxy); the app's own msgpack and wrapt win over ours."""

    def __init__(self, folders):
        self.folders = folders

    def find_spec(self, fullname, path=None, target=None):
        folder = self.folders.get(fullname)
        if folder is None:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [folder])


def _install_finders(value):
    folders = dict(pair.split("=", 1) for pair in value.split(os.pathsep) if "=" in pair)
    first = {k: v for k, v in folders.items() if k == "mirrord"}
    last = {k: v for k, v in folders.items() if k != "mirrord"}
    if first:
        sys.meta_path.insert(0, _LayerPackages(first))
    if last:
        sys.meta_path.append(_LayerPackages(last))


def _mirrord_start():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        _install_finders(os.environ.get("MIRRORD_LAYER_PATH", ""))
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
