"""mirrord as a library (`mirrord.Session`) and as a pytest plugin, against the real lab."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import requests

import mirrord
from mirrord.lab import Lab

pytest_plugins = ["pytester"]


def test_session_env_run_and_activate(lab: Lab) -> None:
    with mirrord.Session(
        f"netns/{lab.staging_ns}", overrides={"feature.env.exclude": "SECRET_*"}
    ) as staging:
        assert staging.env["STAGING_GREETING"] == "hello-from-staging"
        assert "SECRET_TOKEN" not in staging.env
        # a program run under the session, as the CLI would run it
        code = "import socket; print(socket.gethostbyname('backend.staging.svc'))"
        proc = staging.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        assert proc.stdout.strip() == lab.backend_addr, proc.stderr
        # this very process, for a while
        with staging.activated():
            reply = requests.get("http://backend.staging.svc:8080/in-process", timeout=10).json()
        assert reply["path"] == "/in-process" and reply["client"] == lab.staging_backend_addr
    # deactivated and closed: the name is unknown here again
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("backend.staging.svc", 8080)


def test_session_reports_a_bad_target_in_one_line() -> None:
    with pytest.raises(mirrord.MirrordError) as info:
        mirrord.Session("netns/no-such-namespace").start()
    assert "no-such-namespace" in str(info.value) and "\n" not in str(info.value)


def test_pytest_plugin_brings_staging_into_tests(lab: Lab, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import requests

        def test_backend(staging):
            reply = requests.get("http://backend.staging.svc:8080/from-a-test", timeout=10)
            assert reply.json()["path"] == "/from-a-test"

        def test_env(mirrord_session):
            assert mirrord_session.env["SERVICE_NAME"] == "staging-service"
        """
    )
    result = pytester.runpytest_subprocess(
        "--mirrord-target", f"netns/{lab.staging_ns}", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=2)


def test_pytest_plugin_without_a_target_says_so(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(staging):\n    pass\n")
    result = pytester.runpytest_subprocess()
    assert result.ret != 0
    assert "the mirrord fixtures need a target" in result.stdout.str() + result.stderr.str()


def test_mirrord_package_stays_light_for_the_layer() -> None:
    # the layer imports `mirrord` inside apps: pydantic must not come with it
    code = "import sys, mirrord, mirrord.layer.layer; print(json.dumps('pydantic' in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code], capture_output=True, text=True
    )
    assert json.loads(out.stdout) is False, out.stderr


def test_session_mirror_shows_live_requests(lab: Lab) -> None:
    url = f"http://{lab.staging_addr}:8080/orders"
    with (
        mirrord.Session(f"netns/{lab.staging_ns}") as staging,
        staging.mirror(8080, timeout=10) as live,
    ):
        with requests.Session() as client:  # a user of staging, unaware of us
            answers = [
                client.post(url, data=f"order-{i}", headers={"x-n": str(i)}, timeout=10).text
                for i in range(3)
            ]
        seen = []
        for request in live:
            seen.append(request)
            if len(seen) == 3:
                break
    assert answers == ["staging-service"] * 3  # the target answered, as always
    assert [(r.method, r.path, r.body, r.headers["x-n"]) for r in seen] == [
        ("POST", "/orders", f"order-{i}".encode(), str(i)) for i in range(3)
    ]
