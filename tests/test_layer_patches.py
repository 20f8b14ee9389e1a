"""The layer's patch families, without root and without an intproxy.

Installing wraps exactly what each family lists, uninstalling puts back the very objects
that were there (or removes the wrapper where the attribute was inherited), a family or a
layer that fails half-way undoes what it did, and the layer loads nothing heavy.
"""

from __future__ import annotations

import importlib
import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wrapt
from helpers import modules_loaded

from mirrord.client.proxy import ProxyClient
from mirrord.layer.layer import Layer
from mirrord.layer.patching import PatchFamily
from mirrord.settings.contract import FsSettings, LayerSettings

MISSING = object()


def resolve(module: str, path: str) -> tuple[Any, str]:
    owner: Any = importlib.import_module(module)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    return owner, name


def snapshot(family: PatchFamily) -> list[tuple[Any, str, Any, Any]]:
    """(owner, name, the owner's own attribute or MISSING, what getattr gives) per patch."""
    found = []
    for module, path, _wrapper in family.patches():
        owner, name = resolve(module, path)
        found.append((owner, name, owner.__dict__.get(name, MISSING), getattr(owner, name)))
    return found


@pytest.fixture
def layer(tmp_path: Path) -> Iterator[Layer]:
    # write mode: the file family wraps its write calls too; no intproxy is ever asked
    settings = LayerSettings(fs=FsSettings(mode="write"))
    layer = Layer(settings, ProxyClient(str(tmp_path / "no-intproxy.sock"), "token"))
    try:
        yield layer
    finally:
        layer.uninstall()


def test_every_family_wraps_what_it_lists_and_restores_it(layer: Layer) -> None:
    before = {id(family): snapshot(family) for family in layer.families}
    assert all(before.values()), "every family patches something in write mode"
    layer.install()
    for family in layer.families:
        assert family.installed
        for owner, name, _own, seen in before[id(family)]:
            current = owner.__dict__[name]  # getattr on a class would bind the wrapper
            assert isinstance(current, wrapt.FunctionWrapper), (owner, name)
            assert current.__wrapped__ is seen, (owner, name)
    layer.uninstall()
    for family in layer.families:
        assert not family.installed
        for owner, name, own, seen in before[id(family)]:
            assert owner.__dict__.get(name, MISSING) is own, (owner, name)
            assert getattr(owner, name) is seen, (owner, name)


def test_inherited_attributes_are_removed_not_copied(layer: Layer) -> None:
    # socket.socket inherits connect from _socket.socket: the wrapper is the subclass's own
    assert "connect" not in socket.socket.__dict__
    layer.install()
    assert "connect" in socket.socket.__dict__
    layer.uninstall()
    assert "connect" not in socket.socket.__dict__


def test_install_twice_is_once_and_reinstall_works(layer: Layer) -> None:
    real_open = os.open
    layer.install()
    wrapped = os.open
    layer.install()
    assert os.open is wrapped and os.open.__wrapped__ is real_open
    layer.uninstall()
    layer.uninstall()
    assert os.open is real_open
    layer.install()
    assert os.open.__wrapped__ is real_open
    layer.uninstall()
    assert os.open is real_open


def test_sqlite_is_patched_with_the_files_and_restored(layer: Layer) -> None:
    real = sqlite3.connect
    layer.install()
    assert isinstance(sqlite3.connect, wrapt.FunctionWrapper)
    assert sqlite3.connect.__wrapped__ is real
    layer.uninstall()
    assert sqlite3.connect is real
    layer.install()  # again after an uninstall: the import hook is not needed any more
    assert isinstance(sqlite3.connect, wrapt.FunctionWrapper)
    layer.uninstall()
    assert sqlite3.connect is real


def test_local_fs_mode_wraps_no_file_call(tmp_path: Path) -> None:
    real_open = open
    layer = Layer(LayerSettings(fs=FsSettings(mode="local")), ProxyClient("/nonexistent", "t"))
    layer.install()
    try:
        import builtins

        assert builtins.open is real_open
        assert isinstance(socket.getaddrinfo, wrapt.FunctionWrapper)
    finally:
        layer.uninstall()
    assert not isinstance(socket.getaddrinfo, wrapt.FunctionWrapper)


class HalfInstallable(PatchFamily):
    """Two real attributes, then one that does not exist."""

    def patches(self) -> list[tuple[str, str, Any]]:
        def passthrough(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            return wrapped(*args, **kwargs)

        return [
            ("os", "getcwd", passthrough),
            ("os", "getpid", passthrough),
            ("os", "no_such_call_in_os", passthrough),
        ]


def test_a_family_that_fails_half_way_rolls_back() -> None:
    real_getcwd, real_getpid = os.getcwd, os.getpid
    family = HalfInstallable()
    with pytest.raises(AttributeError):
        family.install()
    assert not family.installed
    assert os.getcwd is real_getcwd and os.getpid is real_getpid


def test_a_layer_whose_family_fails_undoes_the_others(layer: Layer) -> None:
    real_getaddrinfo, real_open = socket.getaddrinfo, os.open
    layer.families.insert(2, HalfInstallable())
    with pytest.raises(AttributeError):
        layer.install()
    assert not any(family.installed for family in layer.families)
    assert socket.getaddrinfo is real_getaddrinfo and os.open is real_open
    assert not isinstance(socket.socket.__dict__.get("connect"), wrapt.FunctionWrapper)


def test_the_layer_loads_no_heavy_library() -> None:
    heavy = ("anyio", "pydantic", "h11", "click", "rich", "yaml", "scapy", "mirrord.config")
    assert modules_loaded("import mirrord.layer.layer", (*heavy, "mirrord.wire")) == []
