"""What can be targeted in a namespace (``mirrord ls``), as mirrord's target seeker
lists it: running pods (``pod/NAME``, or ``pod/NAME/container/C`` for each container
that is not a known sidecar when there are several), deployments with an available
replica, and the other workload kinds by name. Agents (``app=mirrord``) are left out."""

from __future__ import annotations

from typing import Any

from mirrord.kube.errors import KubeError, call
from mirrord.kube.resolve import SIDECARS, WORKLOADS
from mirrord.kube.rest import Rest, path

#: The order mirrord lists them in (``KubeResourceSeeker::all``).
KINDS = (
    "deployment",
    "rollout",
    "statefulset",
    "cronjob",
    "job",
    "service",
    "replicaset",
    "pod",
)
NOT_AGENTS = "app!=mirrord"


def _items(rest: Rest, kind: str, namespace: str | None, **query: Any) -> list[dict[str, Any]]:
    group, plural = WORKLOADS[kind]
    where = f"in namespace {namespace}" if namespace else "in all namespaces"
    try:
        listed = call(
            f"list {plural} {where}",
            rest.get,
            path(group, namespace, plural),
            labelSelector=NOT_AGENTS,
            **query,
        )
    except KubeError as exc:
        if kind == "rollout" and exc.status == 404:
            return []  # no Argo Rollouts in this cluster
        raise
    return list(listed.get("items") or [])


def _paths(kind: str, obj: dict[str, Any]) -> list[str]:
    name = obj["metadata"]["name"]
    if kind == "pod":
        names = [c["name"] for c in obj["spec"]["containers"] if c["name"] not in SIDECARS]
        if len(names) <= 1:
            return [f"pod/{name}"]
        return [f"pod/{name}/container/{c}" for c in names]
    if kind == "deployment":
        available = (obj.get("status") or {}).get("availableReplicas") or 0
        return [f"deployment/{name}"] if available >= 1 else []
    if kind == "service" and not (obj.get("spec") or {}).get("selector"):
        return []  # no pods behind it
    return [f"{kind}/{name}"]


def list_targets(
    api: Any, namespace: str | None, kinds: tuple[str, ...] = KINDS
) -> list[tuple[str, str]]:
    """``(namespace, target path)`` of every target in ``namespace`` (None: all)."""
    rest = Rest.of(api)
    found: list[tuple[str, str]] = []
    for kind in (k for k in KINDS if k in kinds):
        query = {"fieldSelector": "status.phase=Running"} if kind == "pod" else {}
        for obj in _items(rest, kind, namespace, **query):
            ns = obj["metadata"].get("namespace", namespace or "")
            found += [(ns, p) for p in _paths(kind, obj)]
    return found


def list_namespaces(api: Any) -> list[str]:
    listed = call("list namespaces", Rest.of(api).get, path("v1", None, "namespaces"))
    return sorted(n["metadata"]["name"] for n in listed.get("items") or [])
