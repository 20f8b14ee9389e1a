"""Loads the layer at interpreter start (called from sitecustomize_hook/).

Must never break the app: any failure prints one line and leaves Python untouched.
"""

from __future__ import annotations

import sys

_layer = None


def start() -> None:
    global _layer
    if _layer is not None:
        return
    layer = None
    try:
        from mirrord.layer.layer import Layer

        layer = Layer.from_env()
        if layer is None:
            return
        # connect first: the app's presence keeps the intproxy alive for its children, and
        # a layer without its intproxy would only turn the app's calls into errors
        layer.context.client.connect()
        layer.install()
        _layer = layer
    except Exception as exc:  # noqa: BLE001 - the app must run even if mirrord cannot help
        if layer is not None:
            layer.uninstall()
        print(f"mirrord: layer not loaded, the app runs without mirrord: {exc}", file=sys.stderr)
