"""Tests that run against staging with mirrord's pytest plugin (installed with mirrord).

    pytest --mirrord-target netns/staging      # as root, with the lab of `mirrord demo`

Without a target the marked tests are skipped, saying why.
"""

from __future__ import annotations

import os
import socket

import pytest
from inventory import fetch_inventory

import mirrord


@pytest.mark.mirrord  # the target comes from --mirrord-target or pytest.ini
def test_checkout_against_staging() -> None:
    # this test's connections, DNS and environment come from staging
    reply = fetch_inventory()
    assert reply.ok and reply.json()["path"] == "/items"
    assert os.environ["SERVICE_NAME"] == "staging-service"


@pytest.mark.mirrord(feature={"env": {"exclude": "SECRET_*"}})  # any mirrord config key
def test_secrets_stay_in_staging(mirrord_session: mirrord.Session) -> None:
    assert "SECRET_TOKEN" not in os.environ
    settings = mirrord_session.read_text("/srv/app/config/settings.yaml")
    assert "db.staging.svc" in settings


def test_session_without_activation(mirrord_session: mirrord.Session) -> None:
    # no marker: the session answers questions, this process stays local
    assert mirrord_session.resolve("backend.staging.svc")
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("backend.staging.svc", 8080)
