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
    try:
        from mirrord.layer.layer import Layer

        layer = Layer.from_env()
        if layer is None:
            return
        layer.install()
        # connect now: the app's presence keeps the intproxy alive for its children
        layer.context.client.connect()
        _layer = layer
    except Exception as exc:  # noqa: BLE001 - the app must run even if mirrord cannot help
        print(f"mirrord: layer not loaded: {exc}", file=sys.stderr)
