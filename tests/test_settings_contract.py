"""The settings contract between the CLI and the layer (MIRRORD_LAYER_SETTINGS).

The C relay reads the same JSON, so its shape is pinned here: the objects below are what
`MirrordConfig.layer_settings()` emitted before the contract existed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, modules_loaded
from hypothesis import given
from hypothesis import strategies as st

from mirrord.config import load_config
from mirrord.settings.contract import (
    DnsSettings,
    FilterSettings,
    FsSettings,
    IncomingSettings,
    LayerSettings,
    OutgoingSettings,
    SettingsError,
)

FS_DEFAULT = {
    "mode": "read",
    "read_write": [],
    "read_only": [],
    "local": [],
    "not_found": [],
    "mapping": {},
    "readonly_file_buffer": None,
}
INCOMING_DEFAULT = {
    "mode": "mirror",
    "http_filter": None,
    "port_mapping": [],
    "listen_ports": [],
    "ignore_ports": [],
    "ports": None,
    "ignore_localhost": False,
}
OUTGOING_DEFAULT = {"tcp": True, "udp": True, "ignore_localhost": False, "filter": None}
DNS_DEFAULT = {"enabled": True, "filter": None}
STEAL = {
    "mode": "steal",
    "http_filter": {"header_filter": "^x-user: me$", "ports": [80, 8080]},
    "port_mapping": [[8000, 80]],
    "listen_ports": [[80, 8081]],
    "ignore_ports": [9999],
    "ports": [80, 81],
    "ignore_localhost": True,
}

# (config tree, the settings JSON it gave before the contract)
SHAPES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (
        {},
        {
            "outgoing": OUTGOING_DEFAULT,
            "dns": DNS_DEFAULT,
            "incoming": INCOMING_DEFAULT,
            "fs": FS_DEFAULT,
        },
    ),
    (
        {"feature": {"network": False}},
        {
            "outgoing": {"tcp": False, "udp": False, "ignore_localhost": False, "filter": None},
            "dns": {"enabled": False, "filter": None},
            "incoming": {**INCOMING_DEFAULT, "mode": "off"},
            "fs": FS_DEFAULT,
        },
    ),
    (
        {
            "feature": {
                "network": {
                    "outgoing": {
                        "udp": False,
                        "ignore_localhost": True,
                        "filter": {"local": ["tcp://1.1.1.0/24:1337", "db.local:5432", ":53"]},
                        "unix_streams": "x.sock",
                    },
                    "dns": {"filter": {"local": ["a.b"]}},
                }
            }
        },
        {
            "outgoing": {
                "tcp": True,
                "udp": False,
                "ignore_localhost": True,
                "filter": {
                    "mode": "local",
                    "entries": ["tcp://1.1.1.0/24:1337", "db.local:5432", ":53"],
                },
            },
            "dns": {
                "enabled": True,
                "filter": {"mode": "local", "entries": ["a.b", "db.local:5432"]},
            },
            "incoming": INCOMING_DEFAULT,
            "fs": FS_DEFAULT,
        },
    ),
    (
        {
            "feature": {
                "network": {
                    "incoming": STEAL,
                    "dns": False,
                }
            }
        },
        {
            "outgoing": OUTGOING_DEFAULT,
            "dns": {"enabled": False, "filter": None},
            # every key of this incoming section is in the settings, as it was written
            "incoming": STEAL,
            "fs": FS_DEFAULT,
        },
    ),
    (
        {"feature": {"network": {"incoming": "steal", "outgoing": False}}},
        {
            "outgoing": {"tcp": False, "udp": False, "ignore_localhost": False, "filter": None},
            "dns": DNS_DEFAULT,
            "incoming": {**INCOMING_DEFAULT, "mode": "steal"},
            "fs": FS_DEFAULT,
        },
    ),
    (
        {
            "feature": {
                "fs": {
                    "mode": "write",
                    "read_write": "^/data",
                    "read_only": ["^/etc/app"],
                    "local": ["\\.log$"],
                    "not_found": ["^/secret"],
                    "mapping": {"^/old": "/new"},
                    "readonly_file_buffer": 4096,
                }
            }
        },
        {
            "outgoing": OUTGOING_DEFAULT,
            "dns": DNS_DEFAULT,
            "incoming": INCOMING_DEFAULT,
            "fs": {
                "mode": "write",
                "read_write": ["^/data"],
                "read_only": ["^/etc/app"],
                "local": ["\\.log$"],
                "not_found": ["^/secret"],
                "mapping": {"^/old": "/new"},
                "readonly_file_buffer": 4096,
            },
        },
    ),
    (
        {"feature": {"fs": False}},
        {
            "outgoing": OUTGOING_DEFAULT,
            "dns": DNS_DEFAULT,
            "incoming": INCOMING_DEFAULT,
            "fs": {**FS_DEFAULT, "mode": "local"},
        },
    ),
]


@pytest.mark.parametrize(("tree", "expected"), SHAPES)
def test_json_shape_is_the_one_the_layer_always_read(
    tmp_path: Path, tree: dict[str, Any], expected: dict[str, Any]
) -> None:
    path = tmp_path / "mirrord.json"
    path.write_text(json.dumps(tree))
    cfg = load_config(path, env={})
    text = cfg.layer_contract().to_json()
    assert json.loads(text) == expected
    # same keys in the same order, same value types (true is not 1)
    assert json.dumps(json.loads(text)) == json.dumps(expected)
    assert cfg.layer_settings() == expected
    assert LayerSettings.from_json(text) == cfg.layer_contract()


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
ports = st.integers(0, 0xFFFF)
filters = st.none() | st.builds(
    FilterSettings, mode=st.sampled_from(["local", "remote"]), entries=st.lists(names, max_size=3)
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | names,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=8,
)
contracts = st.builds(
    LayerSettings,
    outgoing=st.builds(
        OutgoingSettings,
        tcp=st.booleans(),
        udp=st.booleans(),
        ignore_localhost=st.booleans(),
        filter=filters,
    ),
    dns=st.builds(DnsSettings, enabled=st.booleans(), filter=filters),
    incoming=st.builds(
        IncomingSettings,
        mode=st.sampled_from(["mirror", "steal", "off"]),
        http_filter=st.none() | st.dictionaries(names, json_values, max_size=3),
        port_mapping=st.lists(st.lists(ports, min_size=2, max_size=2), max_size=3),
        listen_ports=st.lists(st.lists(ports, min_size=2, max_size=2), max_size=3),
        ignore_ports=st.lists(ports, max_size=3),
        ports=st.none() | st.lists(ports, max_size=3),
        ignore_localhost=st.booleans(),
    ),
    fs=st.builds(
        FsSettings,
        mode=st.sampled_from(["local", "localwithoverrides", "read", "write"]),
        read_write=st.lists(names, max_size=3),
        read_only=st.lists(names, max_size=3),
        local=st.lists(names, max_size=3),
        not_found=st.lists(names, max_size=3),
        mapping=st.dictionaries(names, names, max_size=3),
        readonly_file_buffer=st.none() | st.integers(0, 2**40),
    ),
)


@given(contracts)
def test_round_trip(settings: LayerSettings) -> None:
    text = settings.to_json()
    assert LayerSettings.from_json(text) == settings
    assert LayerSettings.from_json(text).to_json() == text


def test_missing_keys_are_defaults() -> None:
    assert LayerSettings.from_json("") == LayerSettings()
    assert LayerSettings.from_json("{}") == LayerSettings()
    partial = LayerSettings.from_json('{"incoming": {"mode": "steal"}, "fs": {}}')
    assert partial.incoming == IncomingSettings(mode="steal")
    assert partial.fs == FsSettings()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[", "layer settings: not JSON"),
        ("[]", "layer settings: expected an object"),
        ('{"outgoing": {"tcp": 1}}', "outgoing.tcp: expected true or false"),
        ('{"outgoing": {"tcp": true, "sctp": true}}', "outgoing: unknown key 'sctp'"),
        ('{"net": {}}', "layer settings: unknown key 'net'"),
        ('{"dns": {"filter": {"mode": "both", "entries": []}}}', "dns.filter.mode: expected"),
        ('{"dns": {"filter": {"mode": "local"}}}', "dns.filter: expected an object with"),
        ('{"incoming": {"port_mapping": [[1, 2, 3]]}}', "incoming.port_mapping: expected"),
        ('{"incoming": {"ports": [70000]}}', "incoming.ports: expected a port"),
        ('{"incoming": {"mode": "copy"}}', "incoming.mode: expected one of mirror"),
        ('{"fs": {"local": "x"}}', "fs.local: expected a list of strings"),
        ('{"fs": {"mapping": {"a": 1}}}', "fs.mapping: expected an object of strings"),
        ('{"fs": {"readonly_file_buffer": true}}', "fs.readonly_file_buffer: expected an integer"),
    ],
)
def test_garbage_is_one_clear_line(text: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as info:
        LayerSettings.from_json(text)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_settings_leave_the_app_running(tmp_path: Path) -> None:
    # the layer refuses the settings in one line; the app itself runs untouched
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{REPO / 'sitecustomize_hook'}:{REPO}",
        "MIRRORD_INTPROXY_SOCKET": str(tmp_path / "none.sock"),
        "MIRRORD_LAYER_SETTINGS": '{"outgoing": {"tcp": "yes"}}',
    }
    done = subprocess.run(
        [sys.executable, "-c", "print('app ran')"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout == "app ran\n"
    assert done.stderr.startswith("mirrord: layer not loaded")
    assert done.stderr.endswith(": outgoing.tcp: expected true or false\n")
    assert done.stderr.count("\n") == 1


def test_contract_imports_only_the_standard_library() -> None:
    loaded = modules_loaded("import mirrord.settings.contract", ("pydantic", "msgpack", "wrapt"))
    assert loaded == []


def test_the_layer_compiles_its_lookups_from_the_contract(tmp_path: Path) -> None:
    from mirrord.layer.context import Rules

    path = tmp_path / "mirrord.json"
    path.write_text(json.dumps(SHAPES[3][0]))  # steal with a filter and port maps
    rules = Rules(LayerSettings.from_json(load_config(path, env={}).layer_contract().to_json()))
    assert rules.incoming.port_mapping == {8000: 80} and rules.incoming.listen_ports == {80: 8081}
    assert rules.incoming.ports == frozenset({80, 81}) and 9999 in rules.incoming.ignore_ports
    assert json.loads(rules.incoming.http_filter) == STEAL["http_filter"]
    assert not rules.remote_dns and rules.dns_filter is None
    assert rules.outgoing_filter.is_remote("tcp", "198.18.0.1", 80)
    # no HTTP filter at all is the empty string the wire carries for "none"
    assert Rules(LayerSettings()).incoming.http_filter == ""
