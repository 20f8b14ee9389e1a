"""What the Kubernetes session tests share: the lab's staging service as a workload of the
lab cluster, played by the harness's runtime, and the CLI run against that cluster."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, mirrord, stop_process
from kubernetes import client

from mirrord.lab import Lab
from mirrord.lab.kube import BinariesMissing, KubeLab, workloads
from mirrord.lab.kube.runtime import Runtime
from mirrord.lab.kube.staging import deploy_staging


@dataclass
class Staging:
    """The lab's staging service as ``deployment/staging`` (pod ``pod``) in ``namespace``."""

    kube: KubeLab
    lab: Lab
    runtime: Runtime
    namespace: str
    pod: str

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kube.kubeconfig), **extra}

    def mirrord(
        self, *args: str, timeout: float = 90, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``python -m mirrord ARGS`` against the lab cluster, as a user runs it."""
        return mirrord(
            *args, timeout=timeout, env={"KUBECONFIG": str(self.kube.kubeconfig), **(env or {})}
        )

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "mirrord", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(),
            cwd=REPO,
            **kw,
        )

    def agent_jobs(self, namespace: str | None = None) -> list[str]:
        batch = client.BatchV1Api(self.kube.api_client())
        jobs = batch.list_namespaced_job(namespace or self.namespace, label_selector="app=mirrord")
        return [j.metadata.name for j in jobs.items]


def script(tmp_path: Path, code: str, name: str = "app.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return str(path)


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeLab]:
    """One Kubernetes lab (real control plane, played node ``played-1``) for the whole run;
    each test works in a namespace of its own (``kube_ns``). Missing binaries fail: CI
    builds them first (scripts/kube-binaries)."""
    try:
        lab = KubeLab.start(tmp_path_factory.mktemp("kube-cluster"))
    except BinariesMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    with lab:
        lab.add_played_node("played-1")
        yield lab


@pytest.fixture
def kube_ns(kube_cluster: KubeLab, request: pytest.FixtureRequest) -> str:
    """A fresh namespace in the session's Kubernetes lab, named after the test."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base}-{len(_KUBE_NAMESPACES)}"
    _KUBE_NAMESPACES.append(name)
    workloads.create_namespace(kube_cluster.api_client(), name)
    return name


_KUBE_NAMESPACES: list[str] = []


@pytest.fixture
def runtime(kube_cluster: KubeLab, tmp_path: Path) -> Iterator[Runtime]:
    with Runtime(kube_cluster, tmp_path / "runtime") as played:
        yield played
    played.check()


@pytest.fixture
def staging(kube_cluster: KubeLab, kube_ns: str, lab: Lab, runtime: Runtime) -> Staging:
    pod = deploy_staging(kube_cluster, runtime, lab, kube_ns)
    return Staging(kube_cluster, lab, runtime, kube_ns, pod)


#: A local HTTP server that says who answered and what it got, one JSON line per request.
SERVER = """
    import http.server, json, os
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            reply = json.dumps({"who": WHO, "client": self.client_address[0],
                                "body": body.decode()}).encode()
            os.write(1, reply + b"\\n")
            self.send_response(200); self.send_header("Content-Length", str(len(reply)))
            self.end_headers(); self.wfile.write(reply)
        def log_message(self, *a): pass
    srv = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H)
    print("ready", flush=True)
    srv.serve_forever()
"""


def config_file(tmp_path: Path, tree: Mapping[str, Any], name: str = "mirrord.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(tree))
    return str(path)


def incoming(tmp_path: Path, mode: str, header: str | None = None) -> str:
    """A config file for ``mode`` (mirror/steal), with a header filter if given."""
    section: dict[str, Any] = {"mode": mode}
    if header:
        section["http_filter"] = {"header_filter": header}
    tag = header.replace(":", "").replace(" ", "") if header else mode
    return config_file(tmp_path, {"feature": {"network": {"incoming": section}}}, f"{tag}.json")


class App:
    """A local server run under mirrord on a cluster target until the test ends."""

    def __init__(self, staging: Staging, tmp_path: Path, who: str, *args: str) -> None:
        code = f"WHO = {who!r}\n" + textwrap.dedent(SERVER)
        self.proc = staging.popen(*args, script(tmp_path, code, f"server-{who}.py"))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            stderr = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"app {who} did not start: {line!r} {stderr}")

    def seen(self, count: int) -> list[dict[str, Any]]:
        assert self.proc.stdout is not None
        return [json.loads(self.proc.stdout.readline()) for _ in range(count)]

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGINT)


@pytest.fixture
def start_app(staging: Staging, tmp_path: Path) -> Iterator[Callable[..., App]]:
    apps: list[App] = []

    def start(who: str, *args: str) -> App:
        apps.append(App(staging, tmp_path, who, *args))
        return apps[-1]

    yield start
    for app in apps:
        app.stop()
