"""The agent pod's container run from the image that Dockerfile.agent builds (podman,
as containerd would run the Job's pod spec: its own network namespace, host PID, the
spec's capabilities), for a whole session on a deployment/ target."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_sessions import Staging, config_file, script

from mirrord.lab import Lab, remote_files
from mirrord.lab.kube import KubeLab
from mirrord.lab.kube.agent_image import ensure_image, podman
from mirrord.lab.kube.runtime import Runtime
from mirrord.lab.kube.staging import deploy_staging

APP = f"""
    import json, os, socket, sys, urllib.request
    backend = urllib.request.urlopen("http://backend.staging.svc:8080/").read().decode()
    with open("{remote_files.ROOT}/config/settings.json") as f:
        settings = json.load(f)
    print(json.dumps({{
        "backend": json.loads(backend)["service"],
        "address": socket.gethostbyname("db.staging.svc"),
        "greeting": os.environ.get("STAGING_GREETING"),
        "settings": settings,
    }}), flush=True)
    sys.stdin.readline()  # the test looks at the agent's container meanwhile
"""


@pytest.fixture(scope="module")
def agent_image() -> str:
    # built offline from this tree (cached by digest); the base once into ~/.cache
    return ensure_image()


@pytest.fixture
def image_runtime(kube_cluster: KubeLab, tmp_path: Path, agent_image: str) -> Iterator[Runtime]:
    with Runtime(kube_cluster, tmp_path / "runtime", images={agent_image: agent_image}) as rt:
        yield rt
    rt.check()


@pytest.mark.timeout(900)  # a cold image build (base included) is ~1-2 minutes
def test_a_session_with_the_agent_from_its_image(
    kube_cluster: KubeLab,
    kube_ns: str,
    lab: Lab,
    image_runtime: Runtime,
    agent_image: str,
    tmp_path: Path,
) -> None:
    pod = deploy_staging(kube_cluster, image_runtime, lab, kube_ns)
    staging = Staging(kube_cluster, lab, image_runtime, kube_ns, pod)
    cfg = config_file(tmp_path, {"agent": {"image": agent_image, "image_pull_policy": "Never"}})
    app = staging.popen(
        "-t",
        "deployment/staging",
        "-n",
        kube_ns,
        "-f",
        cfg,
        script(tmp_path, APP),
        stdin=subprocess.PIPE,
    )
    assert app.stdout is not None and app.stdin is not None
    line = app.stdout.readline()
    if not line:
        app.wait(30)
        raise AssertionError(app.stderr.read() if app.stderr else "no output")
    try:
        assert json.loads(line) == {
            "backend": "backend",
            "address": lab.backend_addr,
            "greeting": "hello-from-staging",
            "settings": remote_files.SETTINGS,
        }, app.stderr.read() if app.stderr else ""
        running = subprocess.run(
            [*podman(), "ps", "--format", "{{.Image}} {{.Names}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert any(
            row.startswith(f"{agent_image} ") and "-mirrord-agent-" in row
            for row in running.splitlines()
        ), running
    finally:
        app.stdin.close()
        app.wait(30)
    assert app.returncode == 0
