"""Shared pytest fixtures."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from mirrord.lab import Lab, create_lab

# speed is for bench/, not for tests: a slow example on a loaded machine is no failure
settings.register_profile("mirrord", deadline=None)
settings.load_profile("mirrord")

# fixtures of the native relay's tests (servers in staging, the relay's builds) and of
# the Kubernetes lab (kube_cluster, kube_ns, runtime, staging)
pytest_plugins = ["native_services", "kube_sessions"]


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh fake staging cluster (network namespaces); needs root."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs the lab tests as root: not root")
        pytest.skip("needs root (not root)")
    # lab tests bind well-known ports on this host (the apps under test): one at a time per
    # network namespace, so that two test runs in one do not take each other's ports (runs
    # in network namespaces of their own, `unshare -n`, go side by side)
    netns = os.stat("/proc/self/ns/net").st_ino
    with open(f"/run/mirrord-lab-tests-{netns}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lab = create_lab()
        try:
            yield lab
        finally:
            lab.close()


@pytest.fixture(params=["fd-passing", "relay"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a local agent carries connections: it hands the app the socket it
    connected in the target, or it relays the bytes (as a remote agent must)."""
    if request.param == "relay":
        monkeypatch.setenv("MIRRORD_NO_FD_PASSING", "1")
    else:
        monkeypatch.delenv("MIRRORD_NO_FD_PASSING", raising=False)
    return str(request.param)
