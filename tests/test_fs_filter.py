"""The fs policy: mode x regex lists x mirrord's default lists -> local / remote / not found."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirrord.settings.fs_filter import (
    LOCAL,
    NOT_FOUND,
    READ_LOCAL_BY_DEFAULT,
    REMOTE,
    FsPolicy,
    RegexSet,
    runtime_local_patterns,
    translate_replacement,
)

MODES = ("local", "localwithoverrides", "read", "write")


def policy(mode: str = "read", home: str | None = "/home/dev", **lists: object) -> FsPolicy:
    runtime = runtime_local_patterns(
        cwd="/work/project",
        home=home,
        tmpdir="/tmp",
        executable="/opt/python/bin/python3",
        directories=["/opt/python", "/venv/lib/python3.11/site-packages", "", "/"],
    )
    return FsPolicy.from_settings({"mode": mode, **lists}, runtime_local=runtime, home=home)


# ------------------------------------------------------------------ mirrord's own cases

# mirrord/layer/src/file/filter.rs, `include_complex_configuration` (the cases that do not
# depend on its since-removed ~/.aws default list): (mode, path, write, bypass = local).
MIRRORD_CASES = [
    ("write", "/a/test.a", False, False),
    ("write", "/pain/read_write/test.a", False, False),
    ("write", "/pain/read_only/test.a", False, False),
    ("write", "/pain/write.a", False, False),
    ("write", "/pain/local/test.a", False, True),
    ("write", "/opt/test.a", False, True),
    ("write", "/a/test.a", True, False),
    ("write", "/pain/read_write/test.a", True, False),
    ("write", "/pain/read_only/test.a", True, True),
    ("write", "/pain/write.a", True, False),
    ("write", "/pain/local/test.a", True, True),
    ("write", "/opt/test.a", True, True),
    ("read", "/a/test.a", False, False),
    ("read", "/pain/read_write/test.a", False, False),
    ("read", "/pain/read_only/test.a", False, False),
    ("read", "/pain/write.a", False, False),
    ("read", "/pain/local/test.a", False, True),
    ("read", "/opt/test.a", False, True),
    ("read", "/a/test.a", True, True),
    ("read", "/pain/read_write/test.a", True, False),
    ("read", "/pain/read_only/test.a", True, True),
    ("read", "/pain/write.a", True, True),
    ("read", "/pain/local/test.a", True, True),
    ("read", "/opt/test.a", True, True),
    ("localwithoverrides", "/a/test.a", False, True),
    ("localwithoverrides", "/pain/read_write/test.a", False, False),
    ("localwithoverrides", "/pain/read_only/test.a", False, False),
    ("localwithoverrides", "/pain/write.a", False, True),
    ("localwithoverrides", "/pain/local/test.a", False, True),
    ("localwithoverrides", "/opt/test.a", False, True),
    ("localwithoverrides", "/a/test.a", True, True),
    ("localwithoverrides", "/pain/read_write/test.a", True, False),
    ("localwithoverrides", "/pain/read_only/test.a", True, True),
    ("localwithoverrides", "/pain/write.a", True, True),
    ("localwithoverrides", "/pain/local/test.a", True, True),
    ("localwithoverrides", "/opt/test.a", True, True),
    *[
        ("local", path, write, True)
        for path in ("/a/test.a", "/pain/read_write/test.a", "/pain/local/test.a", "/opt/test.a")
        for write in (False, True)
    ],
]


@pytest.mark.parametrize(("mode", "path", "write", "bypass"), MIRRORD_CASES)
def test_mirrords_own_filter_cases(mode: str, path: str, write: bool, bypass: bool) -> None:
    p = policy(
        mode,
        read_write=[r"/pain/read_write.*\.a"],
        read_only=[r"/pain/read_only.*\.a"],
        local=[r"/pain/local.*\.a"],
    )
    assert (p.decide(path, write)[0] == LOCAL) is bypass


# ------------------------------------------------------------------ the default lists


@pytest.mark.parametrize(
    "path",
    [
        "/proc/self/status",
        "/sys/class/net",
        "/dev/null",
        "/usr/lib/python3.11/os.py",
        "/etc/passwd",
        "/tmp/x",
        "/srv/app/main.py",  # *.py: the app's code stays local wherever it is
        "/srv/app/__pycache__/x.cpython-311.pyc",
        "/srv/lib.so",
        "/opt/python/lib/python3.11/json/__init__.py",
        "/venv/lib/python3.11/site-packages/requests-2.0.dist-info/METADATA",
        "/work/project/data.txt",  # the working directory
        "/home/dev/.bashrc",
        "/",
    ],
)
def test_default_local(path: str) -> None:
    for mode in ("read", "write", "localwithoverrides"):
        assert policy(mode).decide(path, False)[0] == LOCAL, (mode, path)


@pytest.mark.parametrize("path", ["/etc/hosts", "/etc/resolv.conf", "/etc/ssl/certs/ca.pem"])
def test_dns_and_ca_files_are_read_remotely_by_default(path: str) -> None:
    for mode in ("read", "write", "localwithoverrides"):
        assert policy(mode).decide(path, False)[0] == REMOTE
        assert policy(mode).decide(path, True)[0] == LOCAL  # never written remotely
    assert policy("local").decide(path, False)[0] == LOCAL


def test_cloud_credentials_in_home_are_not_found() -> None:
    for path in ("/home/dev/.kube/config", "/home/dev/.config/gcloud/x", "/home/dev/.azure/a"):
        assert policy("read").decide(path, False)[0] == NOT_FOUND
        # a user list wins over the default
        assert policy("read", read_only=[r"\.kube"]).decide(path, False)[0] != LOCAL
    assert policy("read", read_only=[r"\.kube"]).decide("/home/dev/.kube/c", False)[0] == REMOTE
    assert policy("local").decide("/home/dev/.kube/config", False)[0] == LOCAL


def test_relative_paths_stay_local_unless_not_found() -> None:
    p = policy("write", not_found=["secret"])
    assert p.decide("config/settings.yaml", False)[0] == LOCAL
    assert p.decide("config/settings.yaml", True)[0] == LOCAL
    assert p.decide("config/secret.txt", False)[0] == NOT_FOUND


def test_paths_are_normalised_before_matching() -> None:
    p = policy("read")
    assert p.decide("/usr/../srv/app/x.yaml", False) == (REMOTE, "/srv/app/x.yaml")
    assert p.decide("//srv//app/./y", False) == (REMOTE, "/srv/app/y")
    assert p.decide("/srv/app/../../proc/self/status", False)[0] == LOCAL


def test_patterns_are_case_insensitive_and_rust_syntax() -> None:
    p = policy("read", local=["^/SRV/App"], not_found=[r"(?<name>token)\z"])
    assert p.decide("/srv/app/x", False)[0] == LOCAL
    assert p.decide("/data/TOKEN", False)[0] == NOT_FOUND


def test_mapping_rewrites_first() -> None:
    p = policy("read", mapping={"^/config/(?<rest>.*)": "/srv/app/config/${rest}", "/a": "/b"})
    assert p.decide("/config/settings.yaml", False) == (REMOTE, "/srv/app/config/settings.yaml")
    # mapped into a local path: the decision is about the new path
    p = policy("read", mapping={"^/data/(.*)$": "/tmp/$1"})
    assert p.decide("/data/x", False) == (LOCAL, "/tmp/x")


def test_replacement_syntax() -> None:
    assert re.sub("(a)(?P<n>b)", translate_replacement("$2-${1}-$n-$$-\\"), "ab") == "b-a-b-$-\\"


def test_may_write() -> None:
    assert policy("write").may_write
    assert not policy("read").may_write
    assert policy("read", read_write=["^/data"]).may_write
    assert not policy("local", read_write=["^/data"]).may_write


def test_bad_mode_and_bad_pattern() -> None:
    with pytest.raises(ValueError):
        policy("readwrite")
    with pytest.raises(re.error):
        policy("read", local=["("])


def test_runtime_patterns_never_make_everything_local() -> None:
    patterns = runtime_local_patterns(
        cwd="/", home="/", tmpdir="/tmp", executable=None, directories=["/", "", "rel"]
    )
    assert not RegexSet(patterns).is_match("/srv/app/x")


# ------------------------------------------------------------------ properties

SEGMENTS = st.sampled_from(["srv", "app", "config", "data", "usr", "etc", "x.yaml", "y.py", "Z"])
PATHS = st.lists(SEGMENTS, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts))
POOL = ["^/srv/app", "config", r"\.yaml$", "^/data", "data/", "Z", "^/usr/x"]
LISTS = st.lists(st.sampled_from(POOL), max_size=2, unique=True)


def reference(mode: str, lists: dict[str, list[str]], path: str, write: bool) -> str:
    """mirrord's ensure_remote, written out plainly (one re.search per pattern)."""

    def hit(patterns: list[str] | tuple[str, ...]) -> bool:
        return any(re.search(p, path, re.IGNORECASE) for p in patterns)

    if mode == "local":
        return LOCAL
    if hit(lists["not_found"]):
        return NOT_FOUND
    if hit(lists["read_write"]):
        return REMOTE
    if hit(lists["read_only"]):
        return LOCAL if write else REMOTE
    if hit(lists["local"]):
        return LOCAL
    if not write and hit([r"^/etc/resolv.conf$", r"^/etc/hosts$", r"^/etc/hostname$"]):
        return REMOTE
    if hit(READ_LOCAL_BY_DEFAULT) or hit(["^/tmp", r"^/work/project(/|$)", "^/opt/python"]):
        return LOCAL
    if mode == "localwithoverrides":
        return LOCAL
    if mode == "write":
        return REMOTE
    return LOCAL if write else REMOTE


@settings(max_examples=400, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    read_write=LISTS,
    read_only=LISTS,
    local=LISTS,
    not_found=LISTS,
    path=PATHS,
    write=st.booleans(),
)
def test_decisions_match_mirrords_order(
    mode: str,
    read_write: list[str],
    read_only: list[str],
    local: list[str],
    not_found: list[str],
    path: str,
    write: bool,
) -> None:
    lists = {"read_write": read_write, "read_only": read_only, "local": local}
    lists["not_found"] = not_found
    p = policy(mode, home=None, **lists)
    assert p.decide(path, write) == (reference(mode, lists, path, write), path)


@settings(max_examples=200, deadline=None)
@given(mode=st.sampled_from(MODES), path=PATHS, write=st.booleans(), local=LISTS)
def test_local_mode_and_write_rules(mode: str, path: str, write: bool, local: list[str]) -> None:
    p = policy(mode, home=None, local=local)
    decision = p.decide(path, write)[0]
    if mode == "local":
        assert decision == LOCAL
    if write and mode != "write":
        assert decision == LOCAL  # only write mode (or read_write lists) writes remotely
    if RegexSet(local).is_match(path):
        assert decision == LOCAL


@settings(max_examples=200, deadline=None)
@given(patterns=st.lists(st.sampled_from([*POOL, "(a)|(b)", "(?P<n>x)", "^$"]), max_size=6))
def test_regex_set_is_any_search(patterns: list[str]) -> None:
    regex_set = RegexSet(patterns)
    for text in ("/srv/app/config/x.yaml", "/data/Z", "", "/usr/x", "ab", "x"):
        expected = any(re.search(p, text, re.IGNORECASE) for p in patterns)
        assert regex_set.is_match(text) is expected
