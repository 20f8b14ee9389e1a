"""pytest plugin: a staging target in tests.

    @pytest.mark.mirrord(target="netns/staging")   # or the target of --mirrord-target / ini
    def test_checkout(mirrord_session):            # runs as if inside the target: its
        assert fetch_inventory().ok                #   connections, DNS and environment

    def test_settings(mirrord_session):            # the Session itself, nothing activated
        assert mirrord_session.exists("/app/config/settings.yaml")

    def test_orders(staging):                      # activated for this test, without a marker
        ...

The marker takes `target`, `config` (a mirrord.json path or dict) and any config key
(`feature={...}`, `overrides={"feature.env.exclude": "SECRET_*"}`). Options and ini keys:
`--mirrord-target`/`mirrord_target`, `--mirrord-config`/`mirrord_config`. A test that needs
a target when none is configured is skipped, saying so. Sessions are shared by the run
(one per target and config, so one agent per target); whatever a test opens in one
(mirrors, steals, activations) is closed after it, whether it passed or failed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from mirrord.api.session import Session

MARKER = "mirrord"
NO_TARGET = (
    "mirrord: no target configured (give @pytest.mark.mirrord(target=...), "
    "--mirrord-target, or mirrord_target/mirrord_config in the ini file)"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mirrord")
    group.addoption("--mirrord-target", help="target for the mirrord fixtures (e.g. netns/NAME)")
    group.addoption("--mirrord-config", help="mirrord config file for the mirrord fixtures")
    parser.addini("mirrord_target", "target for the mirrord fixtures")
    parser.addini("mirrord_config", "mirrord config file for the mirrord fixtures")


class SessionPool:
    """The run's sessions, one per target and config, started on first use."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session | Exception] = {}

    def get(self, options: dict[str, Any]) -> Session:
        from mirrord.api.session import Session
        from mirrord.errors import MirrordError

        key = json.dumps(options, sort_keys=True, default=str)
        found = self._sessions.get(key)
        if found is None:
            try:
                found = Session(**options).start()
            except MirrordError as exc:
                found = exc  # the next test on it fails the same way, without waiting again
            self._sessions[key] = found
        if isinstance(found, Exception):
            pytest.fail(f"mirrord: {found}", pytrace=False)
        return found

    def close(self) -> None:
        for session in self._sessions.values():
            if not isinstance(session, Exception):
                session.close()
        self._sessions.clear()


_POOL = pytest.StashKey[SessionPool]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(target=None, config=None, **keys): run the test as if inside the target "
        "(its connections, DNS and environment); keys are mirrord config keys",
    )
    config.stash[_POOL] = SessionPool()


def pytest_unconfigure(config: pytest.Config) -> None:
    pool = config.stash.get(_POOL, None)
    if pool is not None:
        pool.close()


def _session_options(node: pytest.Item) -> dict[str, Any] | None:
    """The Session arguments for a test: its marker's, then the options and ini file."""
    config = node.config
    marker = node.get_closest_marker(MARKER)
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    if marker and marker.args:
        options.setdefault("target", marker.args[0])
    options.setdefault("target", config.getoption("mirrord_target") or None)
    options.setdefault("config", config.getoption("mirrord_config") or None)
    if not options["target"]:
        options["target"] = config.getini("mirrord_target") or None
    if not options["config"]:
        options["config"] = config.getini("mirrord_config") or None
    if not options["target"] and not options["config"]:
        return None
    return options


@pytest.fixture
def mirrord_session(request: pytest.FixtureRequest) -> Iterator[Session]:
    """The test's Session (shared by the run); what the test opens in it is closed after."""
    assert isinstance(request.node, pytest.Item)
    options = _session_options(request.node)
    if options is None:
        pytest.skip(NO_TARGET)
    session = request.config.stash[_POOL].get(options)
    with session.scoped():
        yield session


@pytest.fixture
def staging(mirrord_session: Session) -> Iterator[Session]:
    """This test's own process connects, resolves and reads the environment as the target."""
    with mirrord_session.activate(env=True):
        yield mirrord_session


@pytest.fixture(autouse=True)
def _mirrord_marked(request: pytest.FixtureRequest) -> None:
    """A test with the marker runs activated, as with the `staging` fixture."""
    if request.node.get_closest_marker(MARKER) is not None:
        request.getfixturevalue("staging")
