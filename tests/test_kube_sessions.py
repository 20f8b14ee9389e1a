"""Sessions on Kubernetes targets, end to end: the CLI against the lab's real control
plane, the agent as a Job on the target's node (played by the harness: its command runs
as a process in a network namespace of its own), reached through a port-forward."""

from __future__ import annotations

from pathlib import Path

from helpers import last_json
from kube_sessions import Staging, script

from mirrord.lab import remote_files

APP = f"""
    import json, os, socket, urllib.request
    backend = urllib.request.urlopen("http://backend.staging.svc:8080/").read().decode()
    local = urllib.request.urlopen("http://127.0.0.1:9090/").read().decode()
    with open("{remote_files.ROOT}/config/settings.json") as f:
        settings = json.load(f)
    print(json.dumps({{
        "backend": json.loads(backend)["service"],
        "loopback": local,
        "address": socket.gethostbyname("db.staging.svc"),
        "greeting": os.environ.get("STAGING_GREETING"),
        "settings": settings,
    }}))
"""


def test_deployment_target_outgoing_dns_env_files(staging: Staging, tmp_path: Path) -> None:
    proc = staging.mirrord(
        "-t", "deployment/staging", "-n", staging.namespace, script(tmp_path, APP)
    )
    seen = last_json(proc)
    assert seen == {
        "backend": "backend",
        "loopback": "staging-loopback",
        "address": staging.lab.backend_addr,
        "greeting": "hello-from-staging",
        "settings": remote_files.SETTINGS,
    }
    assert "connected to pod" in proc.stderr, proc.stderr
