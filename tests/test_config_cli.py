"""The config file as a user meets it: `verify-config`, `schema`, env features, CLI flags.

`verify-config` must print mirrord's own JSON report (the IDE plugins read it); the env
features (env_file, unset, mapping, override) are checked from inside an app run in the lab.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO, last_json, mirrord

from mirrord.cli.options import overrides_from
from mirrord.config import load_config
from mirrord.lab import Lab

CONFIGS = REPO / "tests" / "configs"
VALID = sorted(p for p in (CONFIGS / "valid").iterdir() if p.suffix != ".md")

# Target each valid example names, as mirrord's report spells it (`VerifiedTargetConfig`).
TARGETS: dict[str, dict[str, Any]] = {
    "basic.json": {"path": {"pod": "bear-pod", "container": None}, "namespace": None},
    "full.json": {
        "path": {"pod": "test-service-abcdefg-abcd", "container": None},
        "namespace": "default",
    },
    "sqs_printer.json": {
        "path": {"deployment": "sqs-printer", "container": None},
        "namespace": None,
    },
    "target_pod_container_namespace.json": {
        "path": {"pod": "bear-pod", "container": "bear-pod-container"},
        "namespace": "bear-pod-namespace",
    },
    "targetless_namespace.json": {"path": "targetless", "namespace": "bear-namespace"},
}
TARGETS["full.toml"] = TARGETS["full.yaml"] = TARGETS["full.json"]

# Steal mode without a target: fine for an IDE (it asks for a target), refused otherwise.
STEAL_WITHOUT_TARGET = {
    "issue_2647.json",
    "issue_2647.toml",
    "issue_2647.yaml",
    "network_complete.json",
}

# file -> (key the one-line error must name, a fragment of the message)
INVALID: dict[str, tuple[str, str]] = {
    "agent_ttl_string.yaml": ("agent.ttl", 'expected an integer, got "30"'),
    "agent_ttl_too_big.json": ("agent.ttl", "must be at most 65535"),
    "copy_target_string.json": ("feature.copy_target", "expected true, false or an object"),
    "dns_filter_both.json": ("feature.network.dns.filter", 'exactly one of "local" or "remote"'),
    "duplicate_key.json": ("feature.env", "duplicate key"),
    "env_file_list.json": ("feature.env.env_file", "expected a string, got a list"),
    "env_include_and_exclude.json": ("feature.env", "cannot use both include and exclude"),
    "env_key_typo.toml": ("feature.env.includes", 'did you mean "include"'),
    "env_mapping_bad_regex.json": ("feature.env.mapping", 'invalid regular expression "(unclosed"'),
    "env_override_number.yaml": ("feature.env.override.PORT", "expected a string, got 8080"),
    "env_unset_number.json": ("feature.env.unset", "expected a string or a list of strings"),
    "env_yes.json": ("feature.env", 'expected true, false or an object, got "yes"'),
    "fs_mode_bad.toml": ("feature.fs.mode", 'got "readwrite"'),
    "image_pull_secret_key.json": ("agent.image_pull_secrets.0.secret-key", "unknown key"),
    "incoming_mode_typo.yaml": ("feature.network.incoming", 'got "stael"'),
    "network_number.yaml": ("feature.network", "expected true, false or an object, got 1"),
    "outgoing_filter_bad_entry.json": (
        "feature.network.outgoing.filter.local.0",
        'invalid filter entry "google.com/24"',
    ),
    "port_mapping_short.json": (
        "feature.network.incoming.port_mapping.0",
        "expected at least 2 items, got 1",
    ),
    "skip_processes_number.json": ("skip_processes", "expected a string or a list of strings"),
    "steal_targetless.json": (
        "feature.network.incoming.mode",
        "steal mode is not compatible with a targetless agent",
    ),
    "target_bad_path.json": ("target.path", 'invalid target "bear-pod"'),
    "target_two_kinds.json": ("target.path", 'got keys "pod", "deployment"'),
    "tcp_string.toml": ("feature.network.outgoing.tcp", 'expected a boolean, got "yes"'),
    "unix_streams_number.json": (
        "feature.network.outgoing.unix_streams",
        "expected a string or a list of strings, got 42",
    ),
    "unknown_feature_key.json": ("feature.netwrk", 'unknown key (did you mean "network"?)'),
    "unknown_top_key.json": ("featur", 'unknown key (did you mean "feature"?)'),
}

SUCCESS_KEYS = {"type", "config", "warnings", "compatible_target_types"}
ALL_TARGET_TYPES = [
    "targetless",
    "pod",
    "deployment",
    "rollout",
    "job",
    "cronjob",
    "statefulset",
    "service",
    "replicaset",
]


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mirrord: ")
    return lines[0]


def read_any(path: Path) -> Any:
    """A config file's tree, read the way its extension says."""
    text = path.read_text()
    if path.suffix == ".toml":
        return tomllib.loads(text)
    if path.suffix in (".yaml", ".yml"):
        return yaml.safe_load(text)
    return json.loads(text)


# ------------------------------------------------------------------------ verify-config


def test_there_are_examples_in_all_three_formats() -> None:
    assert {p.suffix for p in VALID} == {".json", ".toml", ".yaml"}
    assert len(VALID) >= 15
    assert sorted(p.name for p in (CONFIGS / "invalid").iterdir()) == sorted(INVALID)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_verify_config_accepts_mirrords_examples(path: Path) -> None:
    proc = mirrord("verify-config", "--ide", str(path))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    report = json.loads(proc.stdout)
    assert report["type"] == "Success", report
    assert set(report) == SUCCESS_KEYS  # --ide: resolved_config only with --resolved
    assert set(report["config"]) == {"path", "namespace"}
    assert isinstance(report["warnings"], list)
    assert all(isinstance(w, str) for w in report["warnings"])
    assert set(report["compatible_target_types"]) <= set(ALL_TARGET_TYPES)
    if path.name in TARGETS:
        assert report["config"] == TARGETS[path.name]

    # The same file from a terminal: exit status says it, and the resolved config is shown.
    proc = mirrord("verify-config", str(path))
    if path.name in STEAL_WITHOUT_TARGET:
        assert "steal mode is not compatible with a targetless agent" in one_line_error(proc)
        assert json.loads(proc.stdout)["type"] == "Fail"
        return
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    report = json.loads(proc.stdout)
    assert report["type"] == "Success" and set(report) == SUCCESS_KEYS | {"resolved_config"}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_malformed_files_give_one_line_naming_the_key(name: str, tmp_path: Path) -> None:
    key, fragment = INVALID[name]
    path = CONFIGS / "invalid" / name
    proc = mirrord("verify-config", str(path))
    line = one_line_error(proc)
    assert f" {key}: " in line, line
    assert fragment in line, line
    assert str(path) in line
    report = json.loads(proc.stdout)
    assert report == {"type": "Fail", "errors": [line.removeprefix("mirrord: ")]}

    # For IDE plugins mirrord exits 0 with the report and writes nothing on stderr: they
    # take stderr output or a failure status as "mirrord itself broke".
    proc = mirrord("verify-config", "--ide", str(path))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert json.loads(proc.stdout) == report

    # Running an app with the file fails the same way, before anything starts.
    app = tmp_path / "app.py"
    app.write_text("print('ran')")
    run_line = one_line_error(mirrord("-f", str(path), str(app)))
    assert f" {key}: " in run_line and fragment in run_line
    assert "ran" not in run_line


def test_verify_config_report_details(tmp_path: Path) -> None:
    config = tmp_path / "mirrord.json"
    config.write_text(
        json.dumps(
            {
                "target": {"path": {"labels": {"app": "api", "tier": "web"}}, "namespace": "ns"},
                "feature": {
                    "copy_target": {"scale_down": True},
                    "network": {
                        "dns": False,
                        "outgoing": {"filter": {"remote": ["db.internal:5432"]}},
                    },
                    "magic": {"aws": False},
                },
            }
        )
    )
    proc = mirrord("verify-config", "--ide", str(config))
    report = json.loads(proc.stdout)
    assert report["type"] == "Success"
    assert report["config"] == {
        "path": {"labels": {"app": "api", "tier": "web"}},
        "namespace": "ns",
    }
    # copy_target (enabled by its object form) with scale_down rules these out in mirrord
    assert report["compatible_target_types"] == [
        "deployment",
        "job",
        "cronjob",
        "statefulset",
        "replicaset",
    ]
    warnings = " | ".join(report["warnings"])
    assert "remote DNS feature is disabled" in warnings
    assert "not implemented" in warnings and "feature.magic.aws" in warnings

    # -f, the default path, and MIRRORD_* variables (mirrord's verify reads them too)
    targetless = tmp_path / "t.json"
    targetless.write_text('{"target": "targetless"}')
    proc = mirrord("verify-config", "-f", str(targetless), "--ide")
    assert json.loads(proc.stdout)["config"] == {"path": "targetless", "namespace": None}
    proc = mirrord(
        "verify-config",
        "--ide",
        str(targetless),
        env={"MIRRORD_IMPERSONATED_TARGET": "pod/from-env/container/c"},
    )
    assert json.loads(proc.stdout)["config"]["path"] == {"pod": "from-env", "container": "c"}
    proc = subprocess.run(
        [sys.executable, "-m", "mirrord", "verify-config"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert "no such file" in one_line_error(proc) and ".mirrord/mirrord.json" in proc.stderr
    (tmp_path / ".mirrord").mkdir()
    (tmp_path / ".mirrord" / "mirrord.json").write_text('{"target": "pod/default-file"}')
    proc = subprocess.run(
        [sys.executable, "-m", "mirrord", "verify-config", "--ide"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert json.loads(proc.stdout)["config"]["path"] == {"pod": "default-file", "container": None}


def test_syntax_errors_name_the_line(tmp_path: Path) -> None:
    # mirrord's "Complete config.json" in its docs has a trailing comma; JSON refuses it.
    config = tmp_path / "complete.json"
    config.write_text('{\n  "agent": {\n    "ttl": 30,\n  }\n}\n')
    line = one_line_error(mirrord("verify-config", str(config)))
    assert "complete.json:4" in line and "invalid JSON" in line
    config = tmp_path / "broken.yaml"
    config.write_text("feature:\n  env: [\n")
    assert "invalid YAML" in one_line_error(mirrord("verify-config", str(config)))


@pytest.mark.parametrize("name", ["full.yaml", "network_complete.json", "fs_advanced.json"])
def test_resolved_config_loads_again_to_the_same_config(name: str, tmp_path: Path) -> None:
    proc = mirrord("verify-config", "--ide", "--resolved", str(CONFIGS / "valid" / name))
    resolved = json.loads(proc.stdout)["resolved_config"]
    again = tmp_path / "resolved.json"
    again.write_text(json.dumps(resolved))
    proc = mirrord("verify-config", "--ide", "--resolved", str(again))
    assert json.loads(proc.stdout)["resolved_config"] == resolved
    original = load_config(CONFIGS / "valid" / name, env={})
    assert load_config(again, env={}).model_dump() == original.model_dump()


# -------------------------------------------------------------------------------- schema


def test_schema_is_json_schema_that_validates_the_examples() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    proc = mirrord("schema")
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert {"target", "feature", "agent"} <= set(schema["properties"])
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in VALID:
        errors = [e.message for e in validator.iter_errors(read_any(path))]
        assert errors == [], (path.name, errors)
    # editors flag the same typos the loader reports
    for name in ("unknown_top_key.json", "tcp_string.toml", "agent_ttl_too_big.json"):
        assert not validator.is_valid(read_any(CONFIGS / "invalid" / name)), name


# ------------------------------------------------------------------------ env in the lab

APP = """
import json, os
names = ["STAGING_GREETING", "DATABASE_URL", "SECRET_TOKEN", "SERVICE_NAME", "FROM_FILE",
         "QUOTED", "SUBSTITUTED", "EXPORTED", "MAPPED_FROM_FILE", "DATABASE_LOCAL",
         "LOCAL_ONLY", "local_only", "KEEP_ME"]
print(json.dumps({name: os.environ.get(name) for name in names}))
"""


def run_in_lab(
    lab: Lab, tmp_path: Path, *flags: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(APP))
    proc = mirrord("-t", f"netns/{lab.staging_ns}", *flags, str(app), env=env)
    return last_json(proc)


def test_env_file_unset_mapping_override_as_the_app_sees_them(lab: Lab, tmp_path: Path) -> None:
    env_file = tmp_path / "staging.env"
    env_file.write_text(
        "# values that replace the target's\n"
        "STAGING_GREETING=from-env-file\n"
        "FROM_FILE=file-value   # a comment\n"
        'QUOTED="two words"\n'
        "SUBSTITUTED=${FROM_FILE}-and-${KEEP_ME}\n"
        "export EXPORTED=yes\n"
        "MAPPED_FROM_FILE=original\n"
    )
    config = tmp_path / "mirrord.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "feature": {
                    "env": {
                        "env_file": str(env_file),
                        "unset": ["Local_Only", "secret_token"],
                        "mapping": {
                            "^DATABASE_": "mapped-database",
                            "_FROM_FILE$": "mapped-file",
                            "SERVICE": "mapped-service",
                        },
                        "override": {"SERVICE_NAME": "overridden"},
                    }
                }
            }
        )
    )
    local = {"LOCAL_ONLY": "a", "local_only": "b", "KEEP_ME": "kept", "DATABASE_LOCAL": "local"}
    seen = run_in_lab(lab, tmp_path, "-f", str(config), env=local)
    assert seen == {
        "STAGING_GREETING": "from-env-file",  # the env file wins over the target
        "DATABASE_URL": "mapped-database",  # mapping rewrites the target's value ...
        "MAPPED_FROM_FILE": "mapped-file",  # ... and the env file's
        "DATABASE_LOCAL": "local",  # ... but not a purely local variable
        "SERVICE_NAME": "overridden",  # override wins over mapping
        "SECRET_TOKEN": None,  # unset removes the target's variable, whatever the case
        "LOCAL_ONLY": None,  # and local ones, in every case
        "local_only": None,
        "FROM_FILE": "file-value",
        "QUOTED": "two words",
        "SUBSTITUTED": "file-value-and-kept",  # $NAME: the local environment, then the file
        "EXPORTED": "yes",
        "KEEP_ME": "kept",
    }


def test_flags_beat_environment_beat_file(lab: Lab, tmp_path: Path) -> None:
    files = {}
    for name in ("file", "environment", "flag"):
        files[name] = tmp_path / f"{name}.env"
        files[name].write_text(f"FROM_FILE={name}\n")
    config = tmp_path / "mirrord.toml"
    config.write_text(
        f'[feature.env]\nenv_file = "{files["file"]}"\ninclude = "STAGING_*;DATABASE_URL"\n'
    )
    env = {"MIRRORD_OVERRIDE_ENV_VARS_FILE": str(files["environment"])}

    seen = run_in_lab(lab, tmp_path, "-f", str(config))
    assert seen["FROM_FILE"] == "file"
    assert seen["STAGING_GREETING"] == "hello-from-staging" and seen["SERVICE_NAME"] is None

    seen = run_in_lab(
        lab,
        tmp_path,
        "-f",
        str(config),
        env={**env, "MIRRORD_OVERRIDE_ENV_VARS_INCLUDE": "SERVICE_NAME"},
    )
    assert seen["FROM_FILE"] == "environment"
    assert seen["SERVICE_NAME"] == "staging-service" and seen["STAGING_GREETING"] is None

    seen = run_in_lab(
        lab,
        tmp_path,
        "-f",
        str(config),
        "--env-file",
        str(files["flag"]),
        "-s",
        "SECRET_TOKEN",
        env={**env, "MIRRORD_OVERRIDE_ENV_VARS_INCLUDE": "SERVICE_NAME"},
    )
    assert seen["FROM_FILE"] == "flag"
    assert seen["SECRET_TOKEN"] == "s3cr3t" and seen["SERVICE_NAME"] is None
    # an exclude flag replaces a lower source's include instead of conflicting with it
    seen = run_in_lab(lab, tmp_path, "-f", str(config), "-x", "SECRET_*;DATABASE_*")
    assert seen["SERVICE_NAME"] == "staging-service"
    assert seen["SECRET_TOKEN"] is None and seen["DATABASE_URL"] is None


def test_env_file_problems_are_one_line(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text("print('ran')")
    missing = tmp_path / "missing.env"
    line = one_line_error(mirrord("-t", "targetless", "--env-file", str(missing), str(app)))
    assert "feature.env.env_file" in line and "missing.env: no such file" in line
    bad = tmp_path / "bad.env"
    bad.write_text("GOOD=1\nvery bacon = yes indeed\n")
    proc = mirrord("exec", "-t", "targetless", "--env-file", str(bad), "--", sys.executable, "-V")
    line = one_line_error(proc)
    assert "bad.env:2" in line and "very bacon" in line


# ------------------------------------------------------------------------------- flags


def test_flags_map_to_mirrords_keys(tmp_path: Path) -> None:
    config = tmp_path / "mirrord.json"
    config.write_text(
        json.dumps(
            {
                "feature": {
                    "fs": {"mode": "write", "read_only": "^/etc"},
                    "network": {"incoming": {"mode": "mirror", "ports": [80]}},
                    "env": {"env_file": "from-file.env"},
                }
            }
        )
    )
    options = {"fs_mode": "local-with-overrides", "env_file": Path("flag.env"), "steal": True}
    env = {"MIRRORD_FILE_MODE": "read", "MIRRORD_OVERRIDE_ENV_VARS_FILE": "env.env"}
    cfg = load_config(config, env=env, overrides=overrides_from(options))
    fs = cfg.feature.fs
    assert fs.mode == "localwithoverrides" and fs.read_only == ["^/etc"]  # type: ignore[union-attr]
    incoming = cfg.feature.network.incoming  # type: ignore[union-attr]
    assert incoming.mode == "steal" and incoming.ports == [80]  # type: ignore[union-attr]
    assert cfg.env.env_file == "flag.env"
    # without flags the environment wins over the file
    cfg = load_config(config, env=env, overrides=overrides_from({}))
    assert cfg.feature.fs.mode == "read"  # type: ignore[union-attr]
    assert cfg.env.env_file == "env.env"


def test_steal_flag_needs_a_target(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text("print('ran')")
    line = one_line_error(mirrord("-t", "targetless", "--steal", str(app)))
    assert "feature.network.incoming.mode" in line and "targetless" in line
    proc = mirrord("--fs-mode", "bogus", "-t", "targetless", str(app))
    assert proc.returncode == 2 and "bogus" in proc.stderr and "Traceback" not in proc.stderr
