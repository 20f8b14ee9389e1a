"""The pytest plugin (`@pytest.mark.mirrord`, `mirrord_session`, `staging`), run the way a
user runs it: pytest in a subprocess, on the sample project and on tests written here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import REPO, agent_pids, nat_rules, processes_mentioning, wait_for

from mirrord.lab import Lab

pytest_plugins = ["pytester"]

PROJECT = REPO / "examples" / "pytest_project"


def run_project(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


def test_sample_project_passes_against_the_lab(lab: Lab) -> None:
    proc = run_project("--mirrord-target", f"netns/{lab.staging_ns}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout


def test_sample_project_without_a_target_is_skipped_saying_so() -> None:
    proc = run_project()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 skipped" in proc.stdout
    assert "mirrord: no target configured" in proc.stdout


def test_a_failing_test_leaves_nothing_behind(lab: Lab, pytester: pytest.Pytester) -> None:
    target = f"netns/{lab.staging_ns}"
    pytester.makeini(f"[pytest]\nmirrord_target = {target}\n")  # the ini key this time
    pytester.makepyfile(
        f"""
        import os, socket, pytest, requests

        URL = "{lab.service_url}/"

        def stolen(environ, start_response):
            start_response("200 OK", [])
            return [b"stolen"]

        @pytest.mark.mirrord
        def test_fails_holding_everything(mirrord_session):
            mirrord_session.steal(8080, handler=stolen)
            mirrord_session.mirror(9090)
            mirrord_session.activate()
            assert requests.get(URL, timeout=10).text == "stolen"
            assert os.environ["SERVICE_NAME"] == "staging-service"
            assert False, "fails on purpose"

        def test_the_next_test_finds_this_process_clean(mirrord_session):
            assert not mirrord_session.active
            assert requests.get(URL, timeout=10).text == "staging-service"  # no steal
            assert "SERVICE_NAME" not in os.environ
            with pytest.raises(socket.gaierror):
                socket.getaddrinfo("backend.staging.svc", 8080)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    assert "fails on purpose" in result.stdout.str()
    # after the run: no intproxy, and the agent leaves with its rules
    assert wait_for(lambda: not agent_pids(target))
    assert not processes_mentioning(f"netns_{lab.staging_ns}")
    assert "MIRRORD_" not in nat_rules(lab)


def test_a_target_that_does_not_exist_fails_the_test_in_one_line(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.mirrord(target="netns/no-such-namespace")
        def test_one():
            pass

        @pytest.mark.mirrord(target="netns/no-such-namespace")
        def test_two():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*mirrord: target netns/no-such-namespace: no such network*"])
    assert "Traceback" not in result.stdout.str()
