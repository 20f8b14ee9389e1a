"""`mirrord ls` and `mirrord port-forward`, for Kubernetes targets (the lab cluster) and
local ones (the lab's network namespaces)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from helpers import loopback_http_server, mirrord
from kube_sessions import Staging

from mirrord.lab import Lab
from mirrord.lab.kube import KubeLab, resources, workloads

NODE = "played-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def local_server() -> Iterator[int]:
    """An HTTP server on this host that says who it is."""
    with loopback_http_server(lambda request: f"local-{request.headers.get('x-user', '')}") as port:
        yield port


class Forward:
    """`mirrord port-forward ...` running until the test ends."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        import os
        import sys

        from helpers import REPO

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mirrord", "port-forward", *argv],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stderr is not None
        self.lines: list[str] = []
        while True:
            line = self.proc.stderr.readline()
            if not line:
                self.proc.wait(10)
                raise AssertionError(f"port-forward ended: {''.join(self.lines)}")
            self.lines.append(line)
            if "port-forward ready" in line:
                return

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(20)


def forward_both_ways(target: list[str], lab: Lab, local_server: int, env=None) -> None:  # type: ignore[no-untyped-def]
    local = free_port()
    fwd = Forward(
        [
            *target,
            "--steal",
            "-L",
            f"{local}:backend.staging.svc:8080",
            "-L",
            f"{lab.backend_addr}:8080",  # the same port here
            "-R",
            f"8080:{local_server}",
        ],
        env,
    )
    try:
        # -L: a name resolved in the target, an address only the target reaches
        assert requests.get(f"http://127.0.0.1:{local}/", timeout=10).json()["service"] == "backend"
        assert requests.get("http://127.0.0.1:8080/", timeout=10).json()["service"] == "backend"
        # -R: what reaches the target's port comes here (stolen)
        got = requests.get(f"http://{lab.staging_addr}:8080/", headers={"x-user": "me"}, timeout=10)
        assert got.text == "local-me"
        assert any(f"-> 127.0.0.1:{local_server} (steal)" in line for line in fwd.lines)
    finally:
        assert fwd.stop() == 0
    # the target's port is its own again
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if requests.get(f"http://{lab.staging_addr}:8080/", timeout=10).text == "staging-service":
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the steal outlived the port-forward")


def test_port_forward_through_a_local_target(lab: Lab, local_server: int) -> None:
    forward_both_ways(["-t", f"netns/{lab.staging_ns}"], lab, local_server)


def test_port_forward_through_a_deployment(staging: Staging, local_server: int) -> None:
    forward_both_ways(
        ["-t", "deployment/staging", "-n", staging.namespace],
        staging.lab,
        local_server,
        {"KUBECONFIG": str(staging.kube.kubeconfig)},
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-L", "nonsense"], "-L nonsense: expected [local_port:]remote_host:remote_port"),
        (["-L", "99999:db:5432"], "99999 is not a port"),
        (["-R", "a:b"], "-R a:b: expected [remote_port:]local_port"),
        ([], "name at least one -L or -R forward"),
    ],
)
def test_bad_forwards_get_one_line(args: list[str], message: str) -> None:
    proc = mirrord("port-forward", "-t", "targetless", *args)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- ls


@pytest.fixture
def many_targets(kube_cluster: KubeLab, kube_ns: str) -> str:
    api = kube_cluster.api_client()
    containers = [resources.container("api"), resources.container("istio-proxy")]
    workloads.apply(
        api, kube_ns, workloads.deployment("web", NODE, {"app": "web"}, containers=containers)
    )
    workloads.apply(
        api, kube_ns, workloads.deployment("db", NODE, {"app": "db"}, kind="StatefulSet")
    )
    workloads.apply(api, kube_ns, workloads.service("web-svc", {"app": "web"}))
    workloads.apply(api, kube_ns, workloads.cronjob("nightly", NODE, {"app": "nightly"}))
    two = [resources.container("api"), resources.container("worker")]
    kube_cluster.create_pod(resources.pod_manifest("solo", NODE, namespace=kube_ns, containers=two))
    kube_cluster.create_pod(resources.pod_manifest("waiting", NODE, namespace=kube_ns))
    core = client_core(kube_cluster)
    resources.wait_for(
        "the controllers' pods",
        lambda: core.list_namespaced_pod(kube_ns).items,
        lambda pods: len(pods) >= 4,
    )
    for pod in core.list_namespaced_pod(kube_ns).items:
        if pod.metadata.name != "waiting":
            resources.play_pod_running(api, pod.metadata.name, kube_ns)
    # what the deployment controller would report once its pod runs
    apps = __import__("kubernetes").client.AppsV1Api(api)
    apps.patch_namespaced_deployment_status(
        "web", kube_ns, {"status": {"replicas": 1, "availableReplicas": 1, "readyReplicas": 1}}
    )
    return kube_ns


def client_core(kube: KubeLab):  # type: ignore[no-untyped-def]
    from kubernetes import client

    return client.CoreV1Api(kube.api_client())


def test_ls_lists_every_kind_as_json_and_text(
    kube_cluster: KubeLab, many_targets: str, tmp_path: Path
) -> None:
    env = {"KUBECONFIG": str(kube_cluster.kubeconfig)}
    proc = mirrord(
        "ls",
        "-n",
        many_targets,
        "-o",
        "json",
        "-t",
        "deployment",
        "-t",
        "statefulset",
        "-t",
        "cronjob",
        "-t",
        "service",
        "-t",
        "pod",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    web_pod = next(t for t in found if t.startswith("pod/web-"))
    assert found[:4] == ["deployment/web", "statefulset/db", "cronjob/nightly", "service/web-svc"]
    assert web_pod.count("/") == 1  # its only non-sidecar container: no container needed
    assert "pod/solo/container/api" in found and "pod/solo/container/worker" in found
    assert not any("waiting" in t for t in found)  # not running
    text = mirrord("ls", "-n", many_targets, "-o", "text", "-t", "deployment", env=env)
    assert text.stdout.splitlines() == ["deployment/web"]
    every = json.loads(mirrord("ls", "-A", "-o", "json", "-t", "statefulset", env=env).stdout)
    assert {"namespace": many_targets, "path": "statefulset/db"} in every
    rich = mirrord(
        "ls", "-n", many_targets, "-t", "cronjob", env={**env, "MIRRORD_LS_RICH_OUTPUT": "true"}
    )
    doc = json.loads(rich.stdout)
    assert doc["targets"] == [{"path": "cronjob/nightly", "available": True}]
    assert doc["current_namespace"] == many_targets and many_targets in doc["namespaces"]


def test_ls_lists_local_network_namespaces(lab: Lab) -> None:
    proc = mirrord("ls", "-o", "json", "-t", "netns", env={"KUBECONFIG": "/nonexistent"})
    assert proc.returncode == 0, proc.stderr
    assert f"netns/{lab.staging_ns}" in json.loads(proc.stdout)


def test_ls_against_a_cluster_that_does_not_answer() -> None:
    proc = mirrord("ls", "-n", "x", env={"KUBECONFIG": "/nonexistent"})
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        == "mirrord: no kubeconfig at /nonexistent: set KUBECONFIG or `kubeconfig` in mirrord.json"
    )
