"""pytest plugin: bring a staging target into tests.

pytest --mirrord-target netns/staging        (or `mirrord_target = ...` in the ini file,
                                              or `mirrord_config = .mirrord/mirrord.json`)

def test_orders(staging):                    # this test's process goes through the target
    assert requests.get("http://backend.staging.svc:8080/orders").ok

def test_env(mirrord_session):               # the session itself, shared by the run
    assert mirrord_session.env["SERVICE_NAME"] == "api"
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mirrord.api.session import Session


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mirrord")
    group.addoption("--mirrord-target", help="target for the mirrord fixtures (e.g. netns/NAME)")
    group.addoption("--mirrord-config", help="mirrord config file for the mirrord fixtures")
    parser.addini("mirrord_target", "target for the mirrord fixtures")
    parser.addini("mirrord_config", "mirrord config file for the mirrord fixtures")


@pytest.fixture(scope="session")
def mirrord_session(request: pytest.FixtureRequest) -> Iterator[Session]:
    """One mirrord session for the whole test run (started on first use)."""
    config = request.config
    target = config.getoption("mirrord_target") or config.getini("mirrord_target") or None
    config_file = config.getoption("mirrord_config") or config.getini("mirrord_config") or None
    if not target and not config_file:
        raise pytest.UsageError(
            "the mirrord fixtures need a target: --mirrord-target, or mirrord_target/"
            "mirrord_config in the ini file"
        )
    from mirrord.api.session import MirrordError, Session  # loaded only when a test uses it

    try:
        session = Session(target, config_file=config_file).start()
    except MirrordError as exc:
        raise pytest.UsageError(f"mirrord: {exc}") from None
    try:
        yield session
    finally:
        session.close()


@pytest.fixture
def staging(mirrord_session: Session) -> Iterator[Session]:
    """This test's own process resolves and connects as the target does."""
    with mirrord_session.activated():
        yield mirrord_session
