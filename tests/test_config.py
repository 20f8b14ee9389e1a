"""Loading mirrord.json: formats, precedence, errors, unimplemented keys, layer settings."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirrord.config import ConfigError, MirrordConfig, load_config

FULL = {
    "target": {"path": "pod/api-7d9/container/main", "namespace": "staging"},
    "feature": {
        "env": {"include": "DATABASE_*;REDIS_HOST", "override": {"LOG_LEVEL": "debug"}},
        "network": {
            "outgoing": {
                "tcp": True,
                "udp": False,
                "ignore_localhost": True,
                "filter": {"local": ["tcp://1.1.1.0/24:1337", "1.1.5.0/24", "google.com", ":53"]},
            },
            "dns": {"enabled": True, "filter": {"remote": ["db.internal", "10.0.0.0/8:5432"]}},
        },
    },
    "agent": {"ttl": 30},
}

TOML_FULL = """
[target]
path = "pod/api-7d9/container/main"
namespace = "staging"

[feature.env]
include = "DATABASE_*;REDIS_HOST"
override = { LOG_LEVEL = "debug" }

[feature.network.outgoing]
tcp = true
udp = false
ignore_localhost = true
filter = { local = ["tcp://1.1.1.0/24:1337", "1.1.5.0/24", "google.com", ":53"] }

[feature.network.dns]
enabled = true
filter = { remote = ["db.internal", "10.0.0.0/8:5432"] }

[agent]
ttl = 30
"""


def write(tmp_path: Path, name: str, content: str | dict[str, Any]) -> Path:
    path = tmp_path / name
    if isinstance(content, dict):
        content = json.dumps(content, indent=2)
    path.write_text(content, encoding="utf-8")
    return path


def load(path: Path | None, env: dict[str, str] | None = None, **overrides: Any) -> MirrordConfig:
    return load_config(path, env=env or {}, overrides=overrides or None)


def check_full(cfg: MirrordConfig) -> None:
    assert cfg.target.path == "pod/api-7d9/container/main"
    assert cfg.target.namespace == "staging"
    assert cfg.env.include == ["DATABASE_*", "REDIS_HOST"]
    assert cfg.env.exclude is None
    assert cfg.env.override == {"LOG_LEVEL": "debug"}
    out = cfg.outgoing
    assert (out.tcp, out.udp, out.ignore_localhost) == (True, False, True)
    assert out.filter is not None and out.filter.mode == "local"
    assert out.filter.entries == ["tcp://1.1.1.0/24:1337", "1.1.5.0/24", "google.com", ":53"]
    assert cfg.dns.enabled
    assert cfg.agent.ttl == 30
    assert cfg.unimplemented_keys == []


# ------------------------------------------------------------------------------ formats


def test_json(tmp_path: Path) -> None:
    check_full(load(write(tmp_path, "mirrord.json", FULL)))


def test_yaml_and_yml(tmp_path: Path) -> None:
    check_full(load(write(tmp_path, "mirrord.yaml", yaml.safe_dump(FULL))))
    check_full(load(write(tmp_path, "mirrord.yml", yaml.safe_dump(FULL))))


def test_toml(tmp_path: Path) -> None:
    check_full(load(write(tmp_path, "mirrord.toml", TOML_FULL)))


def test_file_without_extension_is_json(tmp_path: Path) -> None:
    check_full(load(write(tmp_path, "mirrordconfig", FULL)))


def test_yaml_uses_yaml_1_2_booleans(tmp_path: Path) -> None:
    # PyYAML alone would read `off` as false; mirrord's YAML reader reads the string.
    text = "feature:\n  network:\n    incoming:\n      mode: off\n"
    cfg = load(write(tmp_path, "m.yaml", text))
    incoming = cfg.feature.network.incoming  # type: ignore[union-attr]
    assert incoming.mode == "off"  # type: ignore[union-attr]


def test_empty_yaml_is_an_empty_config(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "m.yaml", ""))
    assert cfg.outgoing.tcp and cfg.dns.enabled and cfg.env.enabled


def test_defaults_without_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load(None)
    assert cfg.target.path is None
    settings_ = cfg.layer_settings()
    assert settings_["outgoing"] == {
        "tcp": True,
        "udp": True,
        "ignore_localhost": False,
        "filter": None,
    }
    assert settings_["dns"] == {"enabled": True, "filter": None}
    assert settings_["incoming"]["mode"] == "mirror"
    assert cfg.agent.ttl == 1
    assert cfg.unimplemented_keys == []


def test_default_path_is_dot_mirrord(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".mirrord").mkdir()
    write(tmp_path / ".mirrord", "mirrord.json", {"target": "pod/x"})
    monkeypatch.chdir(tmp_path)
    assert load(None).target.path == "pod/x"


def test_null_means_unset(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "m.json", {"feature": {"network": {"outgoing": {"tcp": None}}}}))
    assert cfg.outgoing.tcp is True
    assert cfg.unimplemented_keys == []


def test_target_forms(tmp_path: Path) -> None:
    assert load(write(tmp_path, "a.json", {"target": "targetless"})).target.path == "targetless"
    obj = {"target": {"pod": "api", "container": "main"}}
    assert load(write(tmp_path, "b.json", obj)).target.path == "pod/api/container/main"
    nested = {"target": {"path": {"cron_job": "nightly"}, "namespace": "jobs"}}
    cfg = load(write(tmp_path, "c.json", nested))
    assert (cfg.target.path, cfg.target.namespace) == ("cronjob/nightly", "jobs")
    labels = {"target": {"labels": {"tier": "web", "app": "api"}}}
    assert load(write(tmp_path, "d.json", labels)).target.path == "label/app=api,tier=web"
    assert load(None, target="pid/1234").target.path == "pid/1234"
    assert load(None, target="netns/staging").target.path == "netns/staging"


# --------------------------------------------------------------------------- precedence


def test_env_overrides_file_and_overrides_beat_env(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", FULL)
    env = {
        "MIRRORD_IMPERSONATED_TARGET": "deployment/web",
        "MIRRORD_TCP_OUTGOING": "false",
        "MIRRORD_AGENT_TTL": "5",
    }
    cfg = load(path, env)
    assert cfg.target.path == "deployment/web"
    assert cfg.target.namespace == "staging"  # only the path was replaced
    assert cfg.outgoing.tcp is False
    assert cfg.agent.ttl == 5
    cfg = load(path, env, **{"target": "netns/x", "agent.ttl": 7})
    assert (cfg.target.path, cfg.target.namespace, cfg.agent.ttl) == ("netns/x", "staging", 7)


def test_unrelated_environment_is_ignored(tmp_path: Path) -> None:
    cfg = load(None, {"MIRRORD_SOMETHING_ELSE": "1", "PATH": "/bin", "MIRRORD_TCP_OUTGOING": ""})
    assert cfg.outgoing.tcp is True
    assert cfg.unimplemented_keys == []


def test_load_config_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRRORD_REMOTE_DNS", "false")
    assert load_config(None).dns.enabled is False


# Each knob: how to write it in the file, in the environment and as an override, and how to
# read the resolved value back.
KNOBS: dict[str, Any] = {
    "tcp": (
        st.booleans(),
        lambda v: {"feature": {"network": {"outgoing": {"tcp": v}}}},
        lambda v: {"MIRRORD_TCP_OUTGOING": str(v).lower()},
        lambda v: {"feature.network.outgoing.tcp": v},
        lambda cfg: cfg.outgoing.tcp,
    ),
    "udp": (
        st.booleans(),
        lambda v: {"feature": {"network": {"outgoing": {"udp": v}}}},
        lambda v: {"MIRRORD_UDP_OUTGOING": str(v).lower()},
        lambda v: {"feature.network.outgoing.udp": v},
        lambda cfg: cfg.outgoing.udp,
    ),
    "dns": (
        st.booleans(),
        lambda v: {"feature": {"network": {"dns": v}}},
        lambda v: {"MIRRORD_REMOTE_DNS": str(v).lower()},
        lambda v: {"feature.network.dns.enabled": v},
        lambda cfg: cfg.dns.enabled,
    ),
    "target": (
        st.from_regex(r"(pod|deployment|pid|netns)/[a-z0-9-]{1,8}", fullmatch=True),
        lambda v: {"target": v},
        lambda v: {"MIRRORD_IMPERSONATED_TARGET": v},
        lambda v: {"target": v},
        lambda cfg: cfg.target.path,
    ),
    "ttl": (
        st.integers(0, 65535),
        lambda v: {"agent": {"ttl": v}},
        lambda v: {"MIRRORD_AGENT_TTL": str(v)},
        lambda v: {"agent.ttl": v},
        lambda cfg: cfg.agent.ttl,
    ),
    "include": (
        st.lists(st.from_regex(r"[A-Z][A-Z_]{0,5}\*?", fullmatch=True), min_size=1, max_size=3),
        lambda v: {"feature": {"env": {"include": v}}},
        lambda v: {"MIRRORD_OVERRIDE_ENV_VARS_INCLUDE": ";".join(v)},
        lambda v: {"feature.env.include": v},
        lambda cfg: cfg.env.include,
    ),
}
DEFAULTS = {"tcp": True, "udp": True, "dns": True, "target": None, "ttl": 1, "include": None}


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@st.composite
def layered(draw: st.DrawFn) -> dict[str, Any]:
    """For each knob, optionally a file value, an env value and an override value."""
    plan = {}
    for name, (values, *_rest) in KNOBS.items():
        plan[name] = [draw(st.none() | values) for _layer in range(3)]
    return plan


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=150)
@given(plan=layered(), fmt=st.sampled_from(["json", "yaml", "toml"]))
def test_precedence_file_env_override(tmp_path: Path, plan: dict[str, Any], fmt: str) -> None:
    file_tree: dict[str, Any] = {}
    env: dict[str, str] = {}
    overrides: dict[str, Any] = {}
    for name, (file_v, env_v, over_v) in plan.items():
        _values, to_file, to_env, to_override, _read = KNOBS[name]
        if file_v is not None:
            file_tree = _deep_merge(file_tree, to_file(file_v))
        if env_v is not None:
            env.update(to_env(env_v))
        if over_v is not None:
            overrides.update(to_override(over_v))
    path = tmp_path / f"mirrord.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(file_tree))
    elif fmt == "yaml":
        path.write_text(yaml.safe_dump(file_tree))
    else:
        path.write_text(_to_toml(file_tree))
    cfg = load_config(path, env=env, overrides=overrides)
    for name, layers in plan.items():
        given_values = [v for v in layers if v is not None]
        expected = given_values[-1] if given_values else DEFAULTS[name]
        assert KNOBS[name][4](cfg) == expected, name
    assert cfg.unimplemented_keys == []


def _to_toml(tree: dict[str, Any], prefix: str = "") -> str:
    lines, tables = [], []
    for key, value in tree.items():
        if isinstance(value, dict):
            tables.append(_to_toml(value, f"{prefix}{key}."))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    head = f"[{prefix[:-1]}]\n" if prefix and lines else ""
    return head + "".join(f"{line}\n" for line in lines) + "".join(tables)


# -------------------------------------------------------------- merging bool-form sections


def test_override_enables_dns_disabled_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", {"feature": {"network": {"dns": False}}})
    assert load(path).dns.enabled is False
    assert load(path, **{"feature.network.dns.enabled": True}).dns.enabled is True
    filtered = load(path, **{"feature.network.dns.filter": {"local": ["localhost"]}})
    assert filtered.dns.enabled is False  # still disabled: only the filter was set


def test_env_var_reenables_one_protocol_of_disabled_network(tmp_path: Path) -> None:
    # mirrord: with outgoing disabled, MIRRORD_TCP_OUTGOING=true gives TCP only.
    path = write(tmp_path, "m.json", {"feature": {"network": False}})
    cfg = load(path, {"MIRRORD_TCP_OUTGOING": "true"})
    assert (cfg.outgoing.tcp, cfg.outgoing.udp, cfg.dns.enabled) == (True, False, False)
    assert cfg.unimplemented_keys == []


def test_outgoing_false_then_filter_override(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", {"feature": {"network": {"outgoing": False}}})
    cfg = load(path, **{"feature.network.outgoing.udp": True})
    assert (cfg.outgoing.tcp, cfg.outgoing.udp) == (False, True)


def test_bool_override_replaces_object(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", FULL)
    cfg = load(path, **{"feature.network.dns": False, "feature.network.outgoing": False})
    assert cfg.dns.enabled is False
    assert (cfg.outgoing.tcp, cfg.outgoing.udp, cfg.outgoing.filter) == (False, False, None)


def test_env_false_then_include(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", {"feature": {"env": False}})
    assert load(path).env.enabled is False
    cfg = load(path, **{"feature.env.include": ["DB_*"]})
    assert (cfg.env.include, cfg.env.exclude) == (["DB_*"], None)
    cfg = load(path, **{"feature.env.override": {"A": "b"}})
    assert cfg.env.exclude == ["*"]  # still fetches nothing, but the override applies
    assert cfg.env.override == {"A": "b"}


def test_higher_source_include_replaces_lower_exclude(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", {"feature": {"env": {"include": ["A_*"]}}})
    cfg = load(path, {"MIRRORD_OVERRIDE_ENV_VARS_EXCLUDE": "SECRET;TOKEN"})
    assert (cfg.env.include, cfg.env.exclude) == (None, ["SECRET", "TOKEN"])
    cfg = load(path, {"MIRRORD_OVERRIDE_ENV_VARS_EXCLUDE": "X"}, **{"feature.env.include": "B"})
    assert (cfg.env.include, cfg.env.exclude) == (["B"], None)


def test_mode_string_merges_into_object(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", {"feature": {"fs": {"mode": "read", "read_only": "^/etc"}}})
    cfg = load(path, **{"feature.fs": "write"})
    fs = cfg.feature.fs
    assert fs.mode == "write" and fs.read_only == ["^/etc"]  # type: ignore[union-attr]
    path = write(tmp_path, "n.json", {"feature": {"fs": "read"}})
    fs = load(path, **{"feature.fs.local": ["^/tmp"]}).feature.fs
    assert fs.mode == "read" and fs.local == ["^/tmp"]  # type: ignore[union-attr]


def test_target_object_keeps_namespace_with_path_override(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", {"target": {"pod": "x"}})
    cfg = load(path, **{"target.namespace": "ns"})
    assert (cfg.target.path, cfg.target.namespace) == ("pod/x", "ns")
    cfg = load(path, {"MIRRORD_TARGET_NAMESPACE": "env-ns"}, target={"deployment": "d"})
    assert (cfg.target.path, cfg.target.namespace) == ("deployment/d", "env-ns")


def test_none_overrides_are_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", {"target": "pod/x"})
    cfg = load_config(path, env={}, overrides={"target": None, "agent.ttl": None})
    assert (cfg.target.path, cfg.agent.ttl) == ("pod/x", 1)


def test_override_values_may_be_tuples(tmp_path: Path) -> None:
    cfg = load(None, **{"feature.env.exclude": ("A", "B")})
    assert cfg.env.exclude == ["A", "B"]


# ------------------------------------------------------------------------------ errors

MALFORMED: list[tuple[str, str, str, str]] = [
    # (file name, content, key path / fragment that must appear, message fragment)
    (
        "m.json",
        '{"feature": {"network": {"outgoing": {"tcp": "yes"}}}}',
        "feature.network.outgoing.tcp",
        'expected a boolean, got "yes"',
    ),
    ("m.json", '{"feature": {"netwrk": {}}}', "feature.netwrk", 'did you mean "network"'),
    ("m.json", '{"featur": {}}', "featur", 'unknown key (did you mean "feature"?)'),
    (
        "m.json",
        '{"feature": {"env": {"includ": "A"}}}',
        "feature.env.includ",
        'did you mean "include"',
    ),
    (
        "m.json",
        '{"feature": {"network": {"dns": {"enabeld": true}}}}',
        "feature.network.dns.enabeld",
        'did you mean "enabled"',
    ),
    (
        "m.json",
        '{"feature": {"network": {"dns": "yes"}}}',
        "feature.network.dns",
        'expected true, false or an object, got "yes"',
    ),
    ("m.json", '{"feature": {"env": 1}}', "feature.env", "expected true, false or an object"),
    (
        "m.json",
        '{"feature": {"env": {"include": 5}}}',
        "feature.env.include",
        "expected a string or a list of strings",
    ),
    (
        "m.json",
        '{"feature": {"env": {"include": ["A", 5]}}}',
        "feature.env.include.1",
        "expected a string, got 5",
    ),
    (
        "m.json",
        '{"feature": {"env": {"include": "A", "exclude": "B"}}}',
        "feature.env",
        "cannot use both include and exclude",
    ),
    (
        "m.json",
        '{"feature": {"env": {"override": {"A": 1}}}}',
        "feature.env.override.A",
        "expected a string, got 1",
    ),
    (
        "m.json",
        '{"feature": {"network": {"outgoing": {"filter": {"local": ["google.com/24"]}}}}}',
        "feature.network.outgoing.filter.local.0",
        'invalid filter entry "google.com/24"',
    ),
    (
        "m.json",
        '{"feature": {"network": {"outgoing": {"filter": {"remote": "meow://"}}}}}',
        "feature.network.outgoing.filter.remote.0",
        "unknown protocol",
    ),
    (
        "m.json",
        '{"feature": {"network": {"outgoing": {"filter": {"local": []}}}}}',
        "feature.network.outgoing.filter",
        "must not be empty",
    ),
    (
        "m.json",
        '{"feature": {"network": {"outgoing": {"filter": {"local": ":1", "remote": ":2"}}}}}',
        "feature.network.outgoing.filter",
        'exactly one of "local" or "remote"',
    ),
    (
        "m.json",
        '{"feature": {"network": {"outgoing": {"filter": {"both": ":1"}}}}}',
        "feature.network.outgoing.filter.both",
        "unknown key",
    ),
    (
        "m.json",
        '{"feature": {"network": {"dns": {"filter": {"local": ["udp://x"]}}}}}',
        "feature.network.dns.filter.local.0",
        "protocol is not allowed",
    ),
    (
        "m.json",
        '{"feature": {"network": {"incoming": "stael"}}}',
        "feature.network.incoming",
        'expected one of "mirror", "steal" or "off", got "stael"',
    ),
    (
        "m.json",
        '{"feature": {"network": {"incoming": {"port_mapping": [[80]]}}}}',
        "feature.network.incoming.port_mapping.0",
        "expected at least 2 items",
    ),
    ("m.json", '{"feature": {"fs": {"mode": "readwrite"}}}', "feature.fs.mode", "expected one of"),
    ("m.json", '{"agent": {"ttl": 70000}}', "agent.ttl", "must be at most 65535, got 70000"),
    ("m.json", '{"agent": {"ttl": -1}}', "agent.ttl", "must be at least 0"),
    ("m.json", '{"agent": {"ttl": "5"}}', "agent.ttl", 'expected an integer, got "5"'),
    ("m.json", '{"agent": {"ttl": 1.5}}', "agent.ttl", "expected an integer, got 1.5"),
    ("m.json", '{"agent": {"ttl": true}}', "agent.ttl", "expected an integer, got true"),
    (
        "m.json",
        '{"agent": {"image_pull_secrets": [{"nam": "x"}]}}',
        "agent.image_pull_secrets.0.nam",
        'did you mean "name"',
    ),
    ("m.json", '{"agent": []}', "agent", "expected an object, got a list"),
    ("m.json", '{"target": "my-pod"}', "target.path", 'invalid target "my-pod"'),
    ("m.json", '{"target": 7}', "target", "expected a target path string or an object"),
    ("m.json", '{"target": {"pod": "x", "deployment": "y"}}', "target.path", "exactly one of"),
    (
        "m.json",
        '{"target": {"path": "pod/x", "namespace": 3}}',
        "target.namespace",
        "expected a string, got 3",
    ),
    ("m.json", '{"kubeconfig": false}', "kubeconfig", "expected a string, got false"),
    (
        "m.json",
        '{"skip_processes": {"a": 1}}',
        "skip_processes",
        "expected a string or a list of strings",
    ),
    (
        "m.yaml",
        "feature:\n  network:\n    outgoing:\n      udp: maybe\n",
        "feature.network.outgoing.udp",
        'expected a boolean, got "maybe"',
    ),
    ("m.yaml", "agent:\n  tll: 3\n", "agent.tll", 'did you mean "ttl"'),
    (
        "m.toml",
        "[feature.network.dns]\nenabled = 1\n",
        "feature.network.dns.enabled",
        "expected a boolean, got 1",
    ),
    ("m.toml", '[feature]\nenv = "on"\n', "feature.env", 'got "on"'),
]


@pytest.mark.parametrize(("name", "content", "key", "fragment"), MALFORMED)
def test_malformed_configs(
    tmp_path: Path, name: str, content: str, key: str, fragment: str
) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert f" {key}: " in message or f":{key}: " in message, message
    assert fragment in message
    assert info.value.key is not None and info.value.key.startswith(key.split(".")[0])


def test_there_are_at_least_twenty_malformed_cases() -> None:
    assert len(MALFORMED) >= 20


def test_error_names_the_line_in_json(tmp_path: Path) -> None:
    text = """{
  "target": "pod/x",
  "feature": {
    "network": {
      "outgoing": {
        "udp": true,
        "tcp": "yes"
      }
    }
  }
}
"""
    path = write(tmp_path, "mirrord.json", text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == (
        f'{path}:7: feature.network.outgoing.tcp: expected a boolean, got "yes"'
    )
    assert info.value.line == 7


def test_error_line_for_list_item_and_unknown_key_in_json(tmp_path: Path) -> None:
    text = '{\n  "feature": {\n    "netwrk": {},\n    "env": {\n      "include": [\n        "A",\n        5\n      ]\n    }\n  }\n}\n'
    path = write(tmp_path, "mirrord.json", text)
    with pytest.raises(ConfigError) as info:
        load(path)
    # Only the first problem is shown, with a count of the others.
    assert str(info.value).startswith(f"{path}:3: feature.netwrk: unknown key")
    assert "(and 1 more problem)" in str(info.value)
    path = write(tmp_path, "m2.json", text.replace('"netwrk": {},', '"network": {},'))
    with pytest.raises(ConfigError, match=r":7: feature\.env\.include\.1: expected a string"):
        load(path)


def test_error_names_the_line_in_yaml(tmp_path: Path) -> None:
    text = "target: pod/x\nfeature:\n  network:\n    dns:\n      enabled: true\n      filtr: {}\n"
    path = write(tmp_path, "mirrord.yaml", text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert (
        str(info.value)
        == f'{path}:6: feature.network.dns.filtr: unknown key (did you mean "filter"?)'
    )


def test_error_names_the_line_in_toml(tmp_path: Path) -> None:
    text = 'target = "pod/x"\n\n[agent]\nnamespace = "a"\nttl = "long"\n'
    path = write(tmp_path, "mirrord.toml", text)
    with pytest.raises(ConfigError, match=r"mirrord\.toml:5: agent\.ttl: expected an integer"):
        load(path)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("m.json", '{\n  "target": "pod/x",\n}\n', ":3: invalid JSON: "),
        ("m.json", '{\n  // a comment\n  "target": "pod/x"\n}\n', ":2: invalid JSON: "),
        ("m.json", "", ":1: invalid JSON: "),
        ("m.json", "[1, 2]", ": expected an object at the top level, got a list"),
        ("m.json", '{\n "target": "pod/a",\n "target": "pod/b"\n}', ":3: target: duplicate key"),
        ("m.yaml", "feature:\n  env: [\n", ":3: invalid YAML: "),
        ("m.yaml", "- a\n- b\n", ": expected an object at the top level, got a list"),
        ("m.yaml", "agent:\n  ttl: 1\n  ttl: 2\n", ":3: agent.ttl: duplicate key"),
        ("m.toml", "[agent]\nttl = \n", ":2: invalid TOML: "),
        ("m.ini", "[agent]\n", ': unsupported config file extension ".ini"'),
    ],
)
def test_syntax_errors(tmp_path: Path, name: str, content: str, expected: str) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path) + expected), message


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "mirrord.json")
    assert str(info.value) == f"{tmp_path / 'mirrord.json'}: no such file"
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        load(tmp_path / "dir.json")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"MIRRORD_TCP_OUTGOING": "yes"},
            "environment variable MIRRORD_TCP_OUTGOING: feature.network.outgoing.tcp: "
            'expected "true" or "false", got "yes"',
        ),
        (
            {"MIRRORD_AGENT_TTL": "soon"},
            "environment variable MIRRORD_AGENT_TTL: agent.ttl: "
            'expected a non-negative integer, got "soon"',
        ),
        (
            {"MIRRORD_AGENT_TTL": "70000"},
            "environment variable MIRRORD_AGENT_TTL: agent.ttl: must be at most 65535, got 70000",
        ),
        (
            {"MIRRORD_IMPERSONATED_TARGET": "nopath"},
            'environment variable MIRRORD_IMPERSONATED_TARGET: target.path: invalid target "nopath"',
        ),
    ],
)
def test_env_errors(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(None, env)
    assert str(info.value).startswith(expected)


def test_override_errors() -> None:
    with pytest.raises(ConfigError) as info:
        load(None, **{"feature.network.dns.enabled": "no"})
    assert str(info.value) == (
        'command-line override: feature.network.dns.enabled: expected a boolean, got "no"'
    )
    with pytest.raises(ConfigError, match=r"feature\.netwrk: unknown key \(did you mean"):
        load(None, **{"feature.netwrk.dns": True})
    with pytest.raises(ConfigError, match="invalid key path"):
        load_config(None, env={}, overrides={"feature..env": True})


def test_conflict_in_one_source_is_reported_with_that_source(tmp_path: Path) -> None:
    env = {"MIRRORD_OVERRIDE_ENV_VARS_INCLUDE": "A", "MIRRORD_OVERRIDE_ENV_VARS_EXCLUDE": "B"}
    with pytest.raises(ConfigError, match="environment variable MIRRORD_OVERRIDE_ENV_VARS_"):
        load(None, env)


# --------------------------------------------------------------------- unimplemented keys


def test_unimplemented_keys_are_accepted_and_listed(tmp_path: Path) -> None:
    tree = {
        "target": {"path": "pod/x", "namespace": "ns"},
        "kubeconfig": "~/.kube/config",
        "operator": False,
        "agent": {"ttl": 3, "namespace": "mirrord", "image": {"registry": "r", "tag": "t"}},
        "feature": {
            "env": {"include": ["A"], "unset": "AWS_PROFILE", "mapping": {".+_TIMEOUT": "1"}},
            "fs": {"mode": "read", "read_only": ["^/etc"]},
            "network": {
                "incoming": {"mode": "steal", "http_filter": {"header_filter": "x: y"}},
                "outgoing": {"tcp": True, "unix_streams": "bear.+"},
                "dns": {"enabled": False},
                "ipv6": True,
            },
            "copy_target": True,
        },
        "experimental": {"trust_any_certificate": True},
    }
    cfg = load(write(tmp_path, "m.json", tree), {"MIRRORD_AGENT_NAMESPACE": "other"})
    # agent.* and kubeconfig: the agent pod of Kubernetes targets
    assert cfg.unimplemented_keys == [
        "experimental.trust_any_certificate",
        "feature.copy_target",
        "feature.network.ipv6",
        "feature.network.outgoing.unix_streams",
        "operator",
    ]


def test_unimplemented_keys_from_overrides() -> None:
    cfg = load(None, **{"feature.copy_target": True, "agent.ttl": 3})
    assert cfg.unimplemented_keys == ["feature.copy_target"]


def test_mirrords_documented_example_loads(tmp_path: Path) -> None:
    # The complete example from mirrord's configuration docs (lib.rs), trimmed of comments.
    example = {
        "accept_invalid_certificates": False,
        "skip_processes": "ide-debugger",
        "target": {"path": "pod/bear-pod", "namespace": "default"},
        "connect_tcp": None,
        "agent": {
            "log_level": "info",
            "json_log": False,
            "namespace": "default",
            "image": "ghcr.io/metalbear-co/mirrord:latest",
            "image_pull_policy": "IfNotPresent",
            "image_pull_secrets": [{"secret-key": "secret"}],
            "ttl": 30,
            "ephemeral": False,
            "communication_timeout": 30,
            "startup_timeout": 360,
            "network_interface": "eth0",
            "flush_connections": True,
            "metrics": "0.0.0.0:9000",
        },
    }
    path = write(tmp_path, "m.json", example)
    # Keys that are not mirrord keys at all are errors, null or not.
    with pytest.raises(ConfigError, match=r"connect_tcp: unknown key"):
        load(path)
    del example["connect_tcp"]
    with pytest.raises(ConfigError, match=r"agent\.image_pull_secrets\.0\.secret-key"):
        load(write(tmp_path, "m.json", example))
    example["agent"]["image_pull_secrets"] = [{"name": "secret"}]  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"agent\.network_interface: unknown key"):
        load(write(tmp_path, "m.json", example))
    del example["agent"]["network_interface"]  # type: ignore[attr-defined]
    cfg = load(write(tmp_path, "m.json", example))
    assert cfg.agent.ttl == 30
    assert "agent.image" not in cfg.unimplemented_keys  # the agent pod's image
    assert "agent.json_log" in cfg.unimplemented_keys


# ---------------------------------------------------------------------- layer settings


def test_layer_settings(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "m.json", FULL))
    settings_ = cfg.layer_settings()
    assert json.loads(json.dumps(settings_)) == settings_
    assert {key: settings_[key] for key in ("outgoing", "dns")} == {
        "outgoing": {
            "tcp": True,
            "udp": False,
            "ignore_localhost": True,
            "filter": {
                "mode": "local",
                "entries": ["tcp://1.1.1.0/24:1337", "1.1.5.0/24", "google.com", ":53"],
            },
        },
        # google.com is handled locally, but an existing remote DNS filter is left alone.
        "dns": {
            "enabled": True,
            "filter": {"mode": "remote", "entries": ["db.internal", "10.0.0.0/8:5432"]},
        },
    }


def test_outgoing_local_names_are_resolved_locally_too() -> None:
    cfg = load(None, **{"feature.network.outgoing.filter": {"local": ["Db.Local:5432", ":53"]}})
    assert cfg.dns.filter is not None
    assert (cfg.dns.filter.mode, cfg.dns.filter.entries) == ("local", ["db.local:5432"])
    cfg = load(
        None,
        **{
            "feature.network.outgoing.filter": {"remote": ["api.svc"]},
            "feature.network.dns.filter": {"remote": ["db.svc", "api.svc"]},
        },
    )
    assert cfg.dns.filter is not None and cfg.dns.filter.entries == ["db.svc", "api.svc"]
    cfg = load(None, **{"feature.network.outgoing.filter": {"remote": ["api.svc"]}})
    assert cfg.dns.filter is None  # DNS is already all remote


def test_disabled_network_disables_everything() -> None:
    cfg = load(None, **{"feature.network": False})
    settings_ = cfg.layer_settings()
    assert {key: settings_[key] for key in ("outgoing", "dns")} == {
        "outgoing": {"tcp": False, "udp": False, "ignore_localhost": False, "filter": None},
        "dns": {"enabled": False, "filter": None},
    }
    assert settings_["incoming"]["mode"] == "off"


def test_outgoing_filter_single_string() -> None:
    cfg = load(None, **{"feature.network.outgoing.filter.remote": "udp://:53"})
    assert cfg.outgoing.filter is not None and cfg.outgoing.filter.entries == ["udp://:53"]


def test_json_schema() -> None:
    schema = MirrordConfig.model_json_schema()
    text = json.dumps(schema)
    assert schema["additionalProperties"] is False
    for key in ("target", "feature", "agent", "kubeconfig", "skip_processes"):
        assert key in schema["properties"]
    assert "unimplemented_keys" not in schema["properties"]
    assert "_unimplemented_keys" not in text
    # bool-or-object sections show both forms.
    feature = schema["$defs"]["FeatureConfig"]["properties"]["env"]
    assert {"type": "boolean"} in feature["oneOf"]


def test_error_str_is_one_line_even_for_odd_input(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", {"target": "pod\nx"})
    with pytest.raises(ConfigError) as info:
        load(path)
    assert "\n" not in str(info.value)
    path = write(tmp_path, "n.json", {"kube_context": ["a\nb"]})
    with pytest.raises(ConfigError) as info:
        load(path)
    assert "\n" not in str(info.value)


def test_environment_is_not_modified() -> None:
    before = dict(os.environ)
    load_config(None, overrides={"agent.ttl": 2})
    assert dict(os.environ) == before


def test_json_schema_agrees_with_the_loader(tmp_path: Path) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(MirrordConfig.model_json_schema())
    good = [
        FULL,
        {"target": "pod/x", "feature": {"env": False, "network": {"incoming": "steal"}}},
        {"target": {"deployment": "api", "container": "main"}, "feature": {"fs": "read"}},
        {"feature": {"network": {"outgoing": {"filter": {"remote": "udp://:53"}}}}},
    ]
    for tree in good:
        assert list(validator.iter_errors(tree)) == [], tree
        load(write(tmp_path, "good.json", tree))
    for name, content, _key, _fragment in MALFORMED:
        if not name.endswith(".json"):
            continue
        tree = json.loads(content)
        # The schema cannot express cross-field rules or the filter grammar; skip those.
        if "filter" in content or '"include": "A", "exclude"' in content or "my-pod" in content:
            continue
        assert list(validator.iter_errors(tree)), content
