"""From a target path to the pod and container the agent will join, through the API.

``pod/NAME`` is that pod; a workload (deployment, statefulset, replicaset, rollout, job,
service) is the first pod behind its selector that can be targeted; a cronjob is a pod of
one of its active Jobs. A pod can be targeted when it runs, is not being deleted, and its
chosen container is ready with a container id the agent can look for. The container is
the one named, else the pod's ``kubectl.kubernetes.io/default-container``, else the first
that is not a known sidecar (mirrord's list).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mirrord.errors import TargetNotFound
from mirrord.kube.errors import KubeError, call
from mirrord.kube.rest import Rest, path
from mirrord.targets.path import KubeTarget

#: Sidecars a target container is never guessed to be (mirrord's SKIP_NAMES).
SIDECARS = frozenset(
    {
        "istio-proxy",
        "istio-init",
        "istio-validation",
        "linkerd-proxy",
        "linkerd-init",
        "kuma-sidecar",
        "kuma-init",
        "vault-agent",
        "vault-agent-init",
        "queue-proxy",  # Knative
        "traffic-agent",  # Telepresence
    }
)
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
ROLLOUTS = ("argoproj.io", "v1alpha1", "rollouts")


@dataclass(frozen=True)
class ResolvedTarget:
    """The target's pod and container, or just a namespace for ``targetless``."""

    target: KubeTarget
    namespace: str
    pod: str = ""
    pod_uid: str = ""
    node: str = ""
    container: str = ""
    container_id: str = ""  # without the runtime:// prefix
    runtime: str = ""  # containerd, cri-o, docker
    pod_ips: tuple[str, ...] = field(default_factory=tuple)

    @property
    def targetless(self) -> bool:
        return self.target.targetless

    def describe(self) -> str:
        if self.targetless:
            return f"targetless in namespace {self.namespace}"
        return f"pod {self.namespace}/{self.pod}, container {self.container}"


class TargetNotReady(KubeError):
    pass


class KubeTargetNotFound(KubeError, TargetNotFound):
    """The target's object does not exist in its namespace."""


#: Where each kind of workload lives in the API: group/version and plural.
WORKLOADS = {
    "pod": ("v1", "pods"),
    "deployment": ("apps/v1", "deployments"),
    "statefulset": ("apps/v1", "statefulsets"),
    "replicaset": ("apps/v1", "replicasets"),
    "job": ("batch/v1", "jobs"),
    "cronjob": ("batch/v1", "cronjobs"),
    "service": ("v1", "services"),
    "rollout": ("/".join(ROLLOUTS[:2]), ROLLOUTS[2]),
}


def resolve(api: Any, target: KubeTarget, namespace: str) -> ResolvedTarget:
    """The pod/container ``target`` names in ``namespace``; a one-line ``KubeError`` when
    it does not exist, does not run, has no ready pod, or RBAC forbids looking.
    ``api`` is the client's ``ApiClient``."""
    if target.targetless:
        return ResolvedTarget(target, namespace)
    rest = Rest.of(api)
    obj = _read(rest, target, namespace)
    if target.kind == "pod":
        return from_pod(target, obj)
    pods, owner = _workload_pods(rest, target, obj, namespace)
    if not pods:
        raise TargetNotReady(f"target {target} in namespace {namespace}: {owner} has no pod")
    reasons = []
    for pod in pods:
        try:
            return from_pod(target, pod)
        except TargetNotReady as exc:
            reasons.append(str(exc).split(": ", 1)[-1])
    raise TargetNotReady(
        f"target {target} in namespace {namespace}: no ready pod ({'; '.join(reasons[:3])})"
    )


def _read(rest: Rest, target: KubeTarget, namespace: str) -> dict[str, Any]:
    group, plural = WORKLOADS[target.kind]
    try:
        return dict(call(f"get {target}", rest.get, path(group, namespace, plural, target.name)))
    except KubeError as exc:
        if exc.status == 404:
            raise KubeTargetNotFound(
                f"target {target} not found in namespace {namespace}", 404
            ) from None
        raise


def _workload_pods(
    rest: Rest, target: KubeTarget, obj: dict[str, Any], ns: str
) -> tuple[list[dict[str, Any]], str]:
    """The pods behind the workload, and how to name where they came from."""
    spec = obj.get("spec") or {}
    if target.kind == "cronjob":
        return _cronjob_pods(rest, target, obj, ns)
    if target.kind == "service":
        selector = spec.get("selector") or {}
        if not selector:
            raise KubeError(f"target {target}: the service has no selector, so no pods")
        text = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        return _pods(rest, ns, text), f"its selector {text}"
    if target.kind == "rollout":
        selector = _rollout_selector(rest, target, spec, ns)
    else:
        selector = spec.get("selector")
    text = label_selector(selector)
    if not text:
        raise KubeError(f"target {target}: it has no pod selector")
    return _pods(rest, ns, text), f"its selector {text}"


def _pods(rest: Rest, ns: str, selector: str) -> list[dict[str, Any]]:
    listed = call(
        f"list pods in namespace {ns}", rest.get, path("v1", ns, "pods"), labelSelector=selector
    )
    return sorted(listed.get("items") or [], key=lambda p: p["metadata"]["name"])


def label_selector(selector: dict[str, Any] | None) -> str:
    """A LabelSelector (API JSON) as the query string the list calls take."""
    if not selector:
        return ""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], ",".join(expr.get("values") or [])
        parts.append(
            {
                "In": f"{key} in ({values})",
                "NotIn": f"{key} notin ({values})",
                "Exists": key,
                "DoesNotExist": f"!{key}",
            }[op]
        )
    return ",".join(parts)


def _rollout_selector(rest: Rest, target: KubeTarget, spec: dict[str, Any], ns: str) -> Any:
    """Argo Rollouts: ``spec.selector``, or the one of the Deployment its ``workloadRef``
    names (the rollout then runs that Deployment's template)."""
    if spec.get("selector"):
        return spec["selector"]
    ref = spec.get("workloadRef") or {}
    if ref.get("kind") == "Deployment" and ref.get("name"):
        deployment = call(
            f"get deployment/{ref['name']} (the workloadRef of {target})",
            rest.get,
            path("apps/v1", ns, "deployments", ref["name"]),
        )
        return (deployment.get("spec") or {}).get("selector")
    return None


def _cronjob_pods(
    rest: Rest, target: KubeTarget, cron: dict[str, Any], ns: str
) -> tuple[list[dict[str, Any]], str]:
    active = [ref["name"] for ref in (cron.get("status") or {}).get("active") or []]
    if not active:
        raise TargetNotReady(f"target {target} in namespace {ns}: no running pod (no active Job)")
    pods: list[dict[str, Any]] = []
    for job_name in active:
        job = call(
            f"get job/{job_name} of {target}", rest.get, path("batch/v1", ns, "jobs", job_name)
        )
        selector = label_selector((job.get("spec") or {}).get("selector"))
        if selector:
            pods += _pods(rest, ns, selector)
    return pods, f"its active Jobs ({', '.join(active)})"


def choose_container(
    statuses: list[dict[str, Any]], wanted: str | None, default: str | None
) -> dict[str, Any] | None:
    """The status of the container to target (see the module's docstring), or None."""
    if wanted:
        return next((s for s in statuses if s["name"] == wanted), None)
    if default:
        found = next((s for s in statuses if s["name"] == default), None)
        if found is not None:
            return found
    fallback = statuses[0] if statuses else None
    return next((s for s in statuses if s["name"] not in SIDECARS), fallback)


def from_pod(target: KubeTarget, pod: dict[str, Any]) -> ResolvedTarget:
    """The target as this pod (API JSON) runs it; ``TargetNotReady`` says why it cannot be
    targeted."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    where = f"pod {meta['namespace']}/{meta['name']}"
    if meta.get("deletionTimestamp"):
        raise TargetNotReady(f"target {target}: {where} is being deleted")
    phase = status.get("phase")
    if phase != "Running":
        raise TargetNotReady(f"target {target}: {where} is not running (phase {phase})")
    statuses = list(status.get("containerStatuses") or [])
    default = (meta.get("annotations") or {}).get(DEFAULT_CONTAINER_ANNOTATION)
    chosen = choose_container(statuses, target.container, default)
    if chosen is None:
        names = ", ".join(c["name"] for c in spec.get("containers") or []) or "none"
        what = f"no container {target.container!r}" if target.container else "no container"
        raise TargetNotReady(f"target {target}: {where} has {what} (it has: {names})")
    if not chosen.get("ready") or not chosen.get("containerID"):
        raise TargetNotReady(f"target {target}: container {chosen['name']} of {where} is not ready")
    runtime, sep, container_id = chosen["containerID"].partition("://")
    if not sep or not container_id:
        raise TargetNotReady(
            f"target {target}: {where} reports an unknown container id {chosen['containerID']!r}"
        )
    return ResolvedTarget(
        target=target,
        namespace=meta["namespace"],
        pod=meta["name"],
        pod_uid=meta["uid"],
        node=spec.get("nodeName") or "",
        container=chosen["name"],
        container_id=container_id,
        runtime=runtime,
        pod_ips=tuple(ip["ip"] for ip in status.get("podIPs") or []),
    )
