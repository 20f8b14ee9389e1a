"""What the Kubernetes session tests share: the lab's staging service as a workload of the
lab cluster, played by the harness's runtime, and the CLI run against that cluster."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO
from kubernetes import client

from mirrord.kube.errors import KubeError
from mirrord.kube.resolve import resolve
from mirrord.lab import Lab
from mirrord.lab.kube import BinariesMissing, KubeLab, resources, workloads
from mirrord.lab.kube.runtime import Claim, Runtime
from mirrord.targets.path import parse_kube_target

NODE = "played-1"
LABELS = {"app": "staging"}


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
        return subprocess.run(
            [sys.executable, "-m", "mirrord", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(**(env or {})),
            cwd=REPO,
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


def run_staging(kube: KubeLab, runtime: Runtime, lab: Lab, namespace: str) -> str:
    """Deploy ``deployment/staging`` whose pod is the lab's staging service; its pod name."""
    api = kube.api_client()
    runtime.claim(Claim.of_lab(namespace, LABELS, lab))
    containers = [resources.container("main", ports=[lab.service_port])]
    workloads.apply(
        api, namespace, workloads.deployment("staging", NODE, LABELS, containers=containers)
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            return resolve(api, parse_kube_target("deployment/staging"), namespace).pod
        except KubeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


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
    pod = run_staging(kube_cluster, runtime, lab, kube_ns)
    return Staging(kube_cluster, lab, runtime, kube_ns, pod)
