"""Selecting the remote environment for the local app (feature.env)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirrord.config import DEFAULT_EXCLUDES, EnvSettings, MirrordConfig, select_env
from mirrord.config.env_select import apply_mapping, matches_any, without_unset
from mirrord.settings.rust_regex import compile_rust_regex

REMOTE = {
    "DATABASE_URL": "postgres://db:5432/app",
    "DATABASE_PASSWORD": "hunter2",
    "MY_APP_REGION": "eu-1",
    "MY_APP_MODE": "staging",
    "REDIS_HOST": "redis",
    "PATH": "/remote/bin",
    "HOME": "/root",
    "PWD": "/app",
    "PYTHONPATH": "/app/lib",
    "JAVA_HOME": "/opt/java",
    "RUST_LOG": "debug",
    "lower_case": "x",
    "A1": "1",
    "A22": "2",
    "WEIRD[1]": "w",
}


def test_default_takes_everything_but_the_default_excludes() -> None:
    got = select_env(REMOTE, True, {})
    assert got == {k: v for k, v in REMOTE.items() if k not in DEFAULT_EXCLUDES}
    assert "PATH" not in got and "HOME" not in got and "PYTHONPATH" not in got


def test_none_and_default_settings_mean_enabled() -> None:
    assert select_env(REMOTE, None) == select_env(REMOTE, EnvSettings())


def test_disabled_takes_nothing() -> None:
    assert select_env(REMOTE, False, {}) == {}


def test_include_globs() -> None:
    got = select_env(REMOTE, EnvSettings(include=["DATABASE_*", "MY_APP_?EGION"]), {})
    assert got == {
        "DATABASE_URL": REMOTE["DATABASE_URL"],
        "DATABASE_PASSWORD": REMOTE["DATABASE_PASSWORD"],
        "MY_APP_REGION": "eu-1",
    }


def test_question_mark_is_exactly_one_character() -> None:
    assert select_env(REMOTE, EnvSettings(include=["A?"]), {}) == {"A1": "1"}
    assert select_env(REMOTE, EnvSettings(include=["A??"]), {}) == {"A22": "2"}


def test_matching_is_case_sensitive() -> None:
    assert select_env(REMOTE, EnvSettings(include=["database_*", "LOWER_CASE"]), {}) == {}
    assert select_env(REMOTE, EnvSettings(include=["lower_*"]), {}) == {"lower_case": "x"}


def test_brackets_are_literal() -> None:
    # Only * and ? are wildcards (mirrord's wildmatch); fnmatch would read [1] as a class.
    assert select_env(REMOTE, EnvSettings(include=["WEIRD[1]"]), {}) == {"WEIRD[1]": "w"}
    assert select_env(REMOTE, EnvSettings(include=["WEIRD1"]), {}) == {}


def test_exclude_globs_add_to_the_defaults() -> None:
    got = select_env(REMOTE, EnvSettings(exclude=["DATABASE_*", "*_MODE"]), {})
    assert set(got) == {"MY_APP_REGION", "REDIS_HOST", "lower_case", "A1", "A22", "WEIRD[1]"}


def test_exclude_star_takes_nothing() -> None:
    assert select_env(REMOTE, EnvSettings(exclude=["*"]), {}) == {}


def test_empty_include_takes_nothing() -> None:
    assert select_env(REMOTE, EnvSettings(include=[]), {}) == {}


def test_default_excludes_need_an_explicit_include() -> None:
    assert "PATH" not in select_env(REMOTE, EnvSettings(include=["*"]), {})
    assert "PATH" not in select_env(REMOTE, EnvSettings(include=["PAT?"]), {})
    got = select_env(REMOTE, EnvSettings(include=["PATH", "DATABASE_URL"]), {})
    assert got == {"PATH": "/remote/bin", "DATABASE_URL": REMOTE["DATABASE_URL"]}


def test_include_and_exclude_together_is_an_error() -> None:
    with pytest.raises(ValueError, match="both include and exclude"):
        select_env(REMOTE, EnvSettings(include=["A"], exclude=["B"]), {})


def test_override_wins_and_is_always_set() -> None:
    settings = EnvSettings(
        exclude=["REDIS_*"],
        override={"REDIS_HOST": "localhost", "DATABASE_URL": "sqlite://", "NEW": "1"},
    )
    got = select_env(REMOTE, settings, {"NEW": "local"})
    assert got["REDIS_HOST"] == "localhost"
    assert got["DATABASE_URL"] == "sqlite://"
    assert got["NEW"] == "1"


def test_local_mirrord_settings_are_not_replaced_by_remote_ones() -> None:
    remote = {"MIRRORD_AGENT_TTL": "9", "MIRRORD_OTHER": "r", "APP": "a"}
    got = select_env(remote, True, {"MIRRORD_AGENT_TTL": "1"})
    assert got == {"MIRRORD_OTHER": "r", "APP": "a"}


def test_works_from_a_loaded_config() -> None:
    cfg = MirrordConfig.model_validate(
        {"feature": {"env": {"include": "DATABASE_*;REDIS_HOST", "override": {"X": "y"}}}}
    )
    assert cfg.env.include == ["DATABASE_*", "REDIS_HOST"]
    got = select_env(REMOTE, cfg.env, {})
    assert set(got) == {"DATABASE_URL", "DATABASE_PASSWORD", "REDIS_HOST", "X"}
    # The model object itself is accepted too.
    assert select_env(REMOTE, cfg.feature.env, {}) == got


def test_default_exclude_list_is_mirrords() -> None:
    # A few well-known members, and the size of the list in mirrord/agent/src/env.rs.
    for name in ("PATH", "HOME", "PWD", "PYTHONPATH", "JAVA_HOME", "RUST_LOG", "MIRRORD_LOG"):
        assert name in DEFAULT_EXCLUDES
    assert len(DEFAULT_EXCLUDES) == len(set(DEFAULT_EXCLUDES)) == 39


# ---------------------------------------------------------------------------- properties

NAMES = st.text(alphabet="ABCab_1?*[]", min_size=0, max_size=8)


def _reference_match(pattern: str, name: str) -> bool:
    """Plain recursive wildcard matcher to check the regex translation against."""
    if not pattern:
        return not name
    head = pattern[0]
    if head == "*":
        return any(_reference_match(pattern[1:], name[i:]) for i in range(len(name) + 1))
    if not name:
        return False
    if head == "?" or head == name[0]:
        return _reference_match(pattern[1:], name[1:])
    return False


@given(pattern=NAMES, name=NAMES)
def test_glob_matches_reference(pattern: str, name: str) -> None:
    assert matches_any(name, [pattern]) == _reference_match(pattern, name)


VAR_NAMES = st.one_of(
    st.sampled_from(DEFAULT_EXCLUDES),
    st.from_regex(r"[A-Z][A-Z0-9_]{0,6}", fullmatch=True),
)


@given(
    remote=st.dictionaries(VAR_NAMES, st.text(max_size=5), max_size=12),
    patterns=st.lists(st.from_regex(r"[A-Z*?][A-Z0-9_*?]{0,4}", fullmatch=True), max_size=4),
    use_include=st.booleans(),
    override=st.dictionaries(VAR_NAMES, st.text(max_size=5), max_size=3),
)
def test_selection_invariants(
    remote: dict[str, str], patterns: list[str], use_include: bool, override: dict[str, str]
) -> None:
    settings = (
        EnvSettings(include=patterns, override=override)
        if use_include
        else EnvSettings(exclude=patterns, override=override)
    )
    got = select_env(remote, settings, {})
    named = {p for p in patterns if not re.search(r"[*?]", p)} if use_include else set()
    for name, value in got.items():
        if name in override:
            assert value == override[name]
            continue
        assert remote[name] == value
        assert name not in DEFAULT_EXCLUDES or name in named
        assert matches_any(name, patterns) == use_include
    for name in remote:
        wanted = matches_any(name, patterns) == use_include and (
            name not in DEFAULT_EXCLUDES or name in named
        )
        assert (name in got) == (wanted or name in override)


# ------------------------------------------- env_file, mapping, unset (the layers on top)


def test_env_file_values_replace_remote_ones_and_are_not_filtered() -> None:
    settings = EnvSettings(include=["DATABASE_*"])
    got = select_env(REMOTE, settings, {}, file_vars={"DATABASE_URL": "file", "OTHER": "o"})
    assert got == {"DATABASE_URL": "file", "DATABASE_PASSWORD": "hunter2", "OTHER": "o"}


def test_mapping_is_mirrords_remapper() -> None:
    # The cases of EnvVarsRemapper's own test (mirrord/config/src/feature/env/mapper.rs).
    variables = dict.fromkeys(
        [
            "Lech",
            "Krakus_I",
            "Leszko_I",
            "Leszko_II",
            "Leszko_III",
            "Popiel_II",
            "Piast_the_Wheelwright",
        ],
        "Legendary",
    )
    mapping = {
        "Lec.+": "Legendary founder of the great Polish nation",
        "Krak.+": "Legendary founder of Krakow",
        ".+zko_I$": "Defeated the Hungarians",
        ".+zko_II.*": "Succession",
        "([[:alpha:]]|_+)+(Wheel.+)": "Legendary founder of the Piast dinasty",
    }
    assert apply_mapping(variables, mapping) == {
        "Lech": "Legendary founder of the great Polish nation",
        "Krakus_I": "Legendary founder of Krakow",
        "Leszko_I": "Defeated the Hungarians",
        "Leszko_II": "Succession",
        "Leszko_III": "Succession",
        "Popiel_II": "Legendary",
        "Piast_the_Wheelwright": "Legendary founder of the Piast dinasty",
    }


def test_mapping_applies_to_remote_and_file_values_then_override_wins() -> None:
    settings = EnvSettings(
        include=["DATABASE_*", "REDIS_HOST"],
        mapping={"^DATABASE_": "mapped", "HOST$": "mapped-host", "_FILE$": "mapped-file"},
        override={"DATABASE_URL": "overridden"},
    )
    got = select_env(REMOTE, settings, {"LOCAL_FILE": "x"}, file_vars={"FROM_FILE": "f"})
    assert got == {
        "DATABASE_URL": "overridden",
        "DATABASE_PASSWORD": "mapped",
        "REDIS_HOST": "mapped-host",
        "FROM_FILE": "mapped-file",
    }


def test_unset_is_case_insensitive_and_reaches_local_variables() -> None:
    env = {"AWS_PROFILE": "dev", "aws_profile": "x", "Aws_Profile": "y", "KEEP": "k"}
    assert without_unset(env, ["aws_PROFILE"]) == {"KEEP": "k"}
    assert without_unset(env, []) == env


def test_unset_mapping_and_env_file_from_a_loaded_config() -> None:
    cfg = MirrordConfig.model_validate(
        {
            "feature": {
                "env": {
                    "unset": "AWS_PROFILE",
                    "env_file": ".env.staging",
                    "mapping": {".+_TIMEOUT": "1000"},
                }
            }
        }
    )
    assert (cfg.env.unset, cfg.env.env_file) == (["AWS_PROFILE"], ".env.staging")
    assert cfg.env.mapping == {".+_TIMEOUT": "1000"}
    assert select_env({"CONN_TIMEOUT": "5"}, cfg.env, {}) == {"CONN_TIMEOUT": "1000"}


def test_rust_regex_dialect() -> None:
    assert compile_rust_regex("[[:digit:]]+").fullmatch("123")
    assert compile_rust_regex(r"(?<year>\d{4})\z").search("in 2024").group("year") == "2024"
    assert compile_rust_regex(r"(?<=a)b").search("ab")
    with pytest.raises(re.error):
        compile_rust_regex("(")
