"""The lab's staging service (``mirrord.lab``) as ``deployment/staging`` of the lab
cluster: its pod is claimed by the played runtime, so the service's process is the pod's
container (in the cgroup of its container id) and its port is the pod's port."""

from __future__ import annotations

import time
from typing import Any

from mirrord.kube.errors import KubeError
from mirrord.kube.resolve import resolve
from mirrord.lab.kube import resources, workloads
from mirrord.lab.kube.played_pods import Claim
from mirrord.lab.kube.runtime import Runtime
from mirrord.targets.path import parse_kube_target

NODE = "played-1"
LABELS = {"app": "staging"}


def deploy_staging(
    kube: Any, runtime: Runtime, lab: Any, namespace: str, timeout: float = 30.0
) -> str:
    """Deploy ``deployment/staging`` run by ``lab``'s staging service; its pod's name,
    once the pod can be targeted."""
    api = kube.api_client()
    runtime.claim(Claim.of_lab(namespace, LABELS, lab))
    containers = [resources.container("main", ports=[lab.service_port])]
    workloads.apply(
        api, namespace, workloads.deployment("staging", NODE, LABELS, containers=containers)
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            return resolve(api, parse_kube_target("deployment/staging"), namespace).pod
        except KubeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
