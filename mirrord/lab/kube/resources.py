"""What tests do to the lab cluster through its API: nodes, pods, the status the harness
writes for pods on the nodes it plays, kwok port-forwards, service accounts and RBAC.

Every function takes a ``kubernetes.client.ApiClient``, so the same helpers work with an
admin client or a restricted one. Bodies are plain manifests (dicts), as in YAML files.
"""

from __future__ import annotations

import datetime
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mirrord.kube.objects import model, to_dict
from mirrord.lab.kube.stages import PLAYED_NODE_PREFIX

KWOK_GROUP = "kwok.x-k8s.io"
KWOK_VERSION = "v1alpha1"
DEFAULT_IMAGE = "registry.k8s.io/pause:3.10"  # nothing pulls it; kwok only reads the name
NODE_IP = "127.0.0.1"  # kwok's --node-ip: the apiserver reaches every "kubelet" there


class WaitTimeout(TimeoutError):
    pass


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def wait_for(
    what: str, fetch: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 20.0
) -> Any:
    """Poll ``fetch()`` until ``ok(value)``; loopback requests cost ~1 ms, so poll tightly."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    last: Any = None
    while True:
        try:
            last = fetch()
            if ok(last):
                return last
        except ApiException as exc:
            if exc.status != 404:
                raise
        if time.monotonic() > deadline:
            raise WaitTimeout(f"{what}: not after {timeout:.0f} s (last seen: {last!r:.300})")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


# --------------------------------------------------------------------------- nodes


def is_played(node_name: str) -> bool:
    return node_name.startswith(PLAYED_NODE_PREFIX)


def node_manifest(name: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **(labels or {}),
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
        },
    }


def node_ready(node: Any) -> bool:
    conditions = (node.status and node.status.conditions) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def add_node(
    api: client.ApiClient,
    name: str,
    *,
    played: bool = False,
    labels: Mapping[str, str] | None = None,
    timeout: float = 20.0,
) -> Any:
    """Create a Node that kwok manages and wait until it is Ready (about 0.1 s).

    ``played``: the harness plays this node's container runtime (its name must start with
    ``PLAYED_NODE_PREFIX``; kwok then leaves its pods' status to :func:`play_pod_running`).
    """
    if played != is_played(name):
        want = "must" if played else "must not"
        raise ValueError(
            f"node {name!r}: a played node's name {want} start with {PLAYED_NODE_PREFIX!r}"
        )
    core = client.CoreV1Api(api)
    core.create_node(model(client.V1Node, node_manifest(name, labels)))
    return wait_for(f"node {name} Ready", lambda: core.read_node(name), node_ready, timeout)


# --------------------------------------------------------------------------- pods


def container(
    name: str = "main",
    image: str = DEFAULT_IMAGE,
    ports: Iterable[int] = (),
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": image}
    if ports:
        c["ports"] = [{"containerPort": p, "protocol": "TCP"} for p in ports]
    if command:
        c["command"] = list(command)
    if env:
        c["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return c


def pod_manifest(
    name: str,
    node: str,
    *,
    namespace: str = "default",
    containers: Sequence[Mapping[str, Any]] | None = None,
    labels: Mapping[str, str] | None = None,
    ports: Iterable[int] = (),
) -> dict[str, Any]:
    """A pod pinned to ``node`` (no scheduler runs in the lab)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": {
            "nodeName": node,
            "containers": [dict(c) for c in containers] if containers else [container(ports=ports)],
        },
    }


def create_pod(api: client.ApiClient, manifest: Mapping[str, Any]) -> Any:
    ns = manifest["metadata"].get("namespace", "default")
    return client.CoreV1Api(api).create_namespaced_pod(ns, model(client.V1Pod, manifest))


def pod_running(pod: Any) -> bool:
    return bool(pod.status and pod.status.phase == "Running")


def wait_pod(
    api: client.ApiClient,
    name: str,
    namespace: str = "default",
    ok: Callable[[Any], bool] = pod_running,
    timeout: float = 20.0,
) -> Any:
    core = client.CoreV1Api(api)
    return wait_for(
        f"pod {namespace}/{name}",
        lambda: core.read_namespaced_pod(name, namespace),
        ok,
        timeout,
    )


def set_pod_status(
    api: client.ApiClient, name: str, namespace: str, status: Mapping[str, Any]
) -> Any:
    """Replace the pod's status with ``status`` merged over the current one (the status
    subresource, as a kubelet writes it). Retries on a write conflict."""
    core = client.CoreV1Api(api)
    for _ in range(10):
        pod = to_dict(api, core.read_namespaced_pod(name, namespace))
        pod["status"] = {**(pod.get("status") or {}), **status}
        try:
            return core.replace_namespaced_pod_status(name, namespace, model(client.V1Pod, pod))
        except ApiException as exc:
            if exc.status != 409:
                raise
    raise RuntimeError(f"pod {namespace}/{name}: status kept conflicting")


def new_container_id() -> str:
    return secrets.token_hex(32)  # containerd's ids: 64 hex digits


def play_pod_running(
    api: client.ApiClient,
    name: str,
    namespace: str = "default",
    *,
    container_ids: Mapping[str, str] | None = None,
    pod_ip: str | None = None,
) -> dict[str, str]:
    """Write what a kubelet with containerd would for a started pod on a played node:
    phase Running, Ready conditions, containerStatuses with ``containerd://<id>``.

    ``container_ids`` maps container names to ids (new ones for the rest). Returns the ids
    by container name (the harness names the containers' cgroups after them).
    """
    core = client.CoreV1Api(api)
    spec = core.read_namespaced_pod(name, namespace).spec
    assert spec is not None
    if not is_played(spec.node_name or ""):
        raise ValueError(f"pod {namespace}/{name} is on {spec.node_name!r}, not a played node")
    ids = {c.name: (container_ids or {}).get(c.name) or new_container_id() for c in spec.containers}
    t = now()
    conditions = [
        {"type": kind, "status": "True", "lastProbeTime": None, "lastTransitionTime": t}
        for kind in (
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        )
    ]
    statuses = [
        {
            "name": c.name,
            "image": c.image,
            "imageID": f"{c.image}@sha256:{'0' * 64}",
            "containerID": f"containerd://{ids[c.name]}",
            "ready": True,
            "started": True,
            "restartCount": 0,
            "state": {"running": {"startedAt": t}},
        }
        for c in spec.containers
    ]
    status: dict[str, Any] = {
        "phase": "Running",
        "conditions": conditions,
        "containerStatuses": statuses,
        "hostIP": NODE_IP,
        "hostIPs": [{"ip": NODE_IP}],
        "startTime": t,
    }
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    set_pod_status(api, name, namespace, status)
    return ids


# --------------------------------------------------------------------------- kwok port-forwards


#: Where kwok sends a pod port: an address, or a command whose stdin/stdout is the stream.
ForwardTarget = tuple[str, int] | Sequence[str]


def _forward(port: int, target: ForwardTarget) -> dict[str, Any]:
    if isinstance(target, tuple) and len(target) == 2 and isinstance(target[1], int):
        addr, tport = target
        return {"ports": [port], "target": {"address": addr, "port": tport}}
    return {"ports": [port], "command": [str(a) for a in target]}


def port_forward_manifest(
    pod: str, namespace: str, targets: Mapping[int, ForwardTarget]
) -> dict[str, Any]:
    """kwok forwards only the ports it is told about: one forward per pod port."""
    return {
        "apiVersion": f"{KWOK_GROUP}/{KWOK_VERSION}",
        "kind": "PortForward",
        "metadata": {"name": pod, "namespace": namespace},  # kwok matches pods by name
        "spec": {"forwards": [_forward(port, t) for port, t in sorted(targets.items())]},
    }


def _put_custom(api: client.ApiClient, plural: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create or replace a kwok object named like its pod."""
    custom = client.CustomObjectsApi(api)
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    args = (KWOK_GROUP, KWOK_VERSION, namespace, plural)
    try:
        old: Any = custom.get_namespaced_custom_object(*args, name)
    except ApiException as exc:
        if exc.status != 404:
            raise
        result = custom.create_namespaced_custom_object(*args, body)
    else:
        body["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        result = custom.replace_namespaced_custom_object(*args, name, body)
    assert isinstance(result, dict)
    return result


def set_port_forward(
    api: client.ApiClient, pod: str, namespace: str, targets: Mapping[int, ForwardTarget]
) -> dict[str, Any]:
    """Make ``pod``'s ports forward to local addresses (``{pod_port: (address, port)}``)
    or into commands (``{pod_port: [argv...]}``), replacing the pod's earlier forwards."""
    return _put_custom(api, "portforwards", port_forward_manifest(pod, namespace, targets))


def set_logs(
    api: client.ApiClient, pod: str, namespace: str, files: Mapping[str, str]
) -> dict[str, Any]:
    """Serve ``{container: log file}`` (CRI log format) as the pod's logs (kwok's Logs)."""
    body = {
        "apiVersion": f"{KWOK_GROUP}/{KWOK_VERSION}",
        "kind": "Logs",
        "metadata": {"name": pod, "namespace": namespace},
        "spec": {
            "logs": [
                {"containers": [c], "logsFile": str(path), "follow": True}
                for c, path in sorted(files.items())
            ]
        },
    }
    return _put_custom(api, "logs", body)


# --------------------------------------------------------------------------- identities


def create_service_account(api: client.ApiClient, name: str, namespace: str = "default") -> None:
    client.CoreV1Api(api).create_namespaced_service_account(
        namespace,
        model(
            client.V1ServiceAccount,
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
        ),
    )


def service_account_token(
    api: client.ApiClient, name: str, namespace: str = "default", seconds: int = 3600
) -> str:
    """A bound token for the service account (TokenRequest, signed by the apiserver)."""
    req = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": seconds},
    }
    resp = client.CoreV1Api(api).create_namespaced_service_account_token(
        name, namespace, model(client.AuthenticationV1TokenRequest, req)
    )
    assert resp.status is not None and resp.status.token
    return resp.status.token


def grant(
    api: client.ApiClient,
    service_account: str,
    namespace: str,
    rules: Sequence[Mapping[str, Any]],
    role: str | None = None,
) -> None:
    """A Role with ``rules`` in ``namespace``, bound to the service account."""
    rbac = client.RbacAuthorizationV1Api(api)
    role = role or f"{service_account}-role"
    rbac.create_namespaced_role(
        namespace,
        model(
            client.V1Role,
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": role},
                "rules": [dict(r) for r in rules],
            },
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        model(
            client.V1RoleBinding,
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": role},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                "subjects": [
                    {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
                ],
            },
        ),
    )
