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

from mirrord.kube.errors import KubeError, call
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


def resolve(api: Any, target: KubeTarget, namespace: str) -> ResolvedTarget:
    """The pod/container ``target`` names in ``namespace``; a one-line ``KubeError`` when
    it does not exist, does not run, has no ready pod, or RBAC forbids looking."""
    if target.targetless:
        return ResolvedTarget(target, namespace)
    from kubernetes import client

    core = client.CoreV1Api(api)
    if target.kind == "pod":
        pod = call(f"get {target}", _read(core.read_namespaced_pod, target, namespace))
        return from_pod(target, pod)
    pods, owner = _workload_pods(api, target, namespace)
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


def _read(fn: Any, target: KubeTarget, namespace: str) -> Any:
    """A reader of the target's object whose 404 says which target is missing."""

    def read() -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(target.name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise KubeError(
                    f"target {target} not found in namespace {namespace}", 404
                ) from None
            raise

    return read


def _workload_pods(api: Any, target: KubeTarget, ns: str) -> tuple[list[Any], str]:
    """The pods behind the workload, and how to name where they came from."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    kind = target.kind
    if kind == "cronjob":
        return _cronjob_pods(api, target, ns)
    if kind == "service":
        svc = call(f"get {target}", _read(core.read_namespaced_service, target, ns))
        selector = (svc.spec and svc.spec.selector) or {}
        if not selector:
            raise KubeError(f"target {target}: the service has no selector, so no pods")
        return _pods(core, ns, ",".join(f"{k}={v}" for k, v in sorted(selector.items()))), (
            f"its selector {_show(selector)}"
        )
    if kind == "rollout":
        obj = call(f"get {target}", _read(_rollout_reader(api), target, ns))
        selector = _rollout_selector(api, target, obj, ns)
    else:
        apps, batch = client.AppsV1Api(api), client.BatchV1Api(api)
        readers = {
            "deployment": apps.read_namespaced_deployment,
            "statefulset": apps.read_namespaced_stateful_set,
            "replicaset": apps.read_namespaced_replica_set,
            "job": batch.read_namespaced_job,
        }
        obj = call(f"get {target}", _read(readers[kind], target, ns))
        selector = api.sanitize_for_serialization(obj.spec.selector) if obj.spec else None
    text = label_selector(selector)
    if not text:
        raise KubeError(f"target {target}: it has no pod selector")
    return _pods(core, ns, text), f"its selector {text}"


def _pods(core: Any, ns: str, selector: str) -> list[Any]:
    listed = call(
        f"list pods in namespace {ns}", core.list_namespaced_pod, ns, label_selector=selector
    )
    return sorted(listed.items, key=lambda p: p.metadata.name)


def _show(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


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


def _rollout_reader(api: Any) -> Any:
    from kubernetes import client

    custom = client.CustomObjectsApi(api)

    def read(name: str, ns: str) -> Any:
        return custom.get_namespaced_custom_object(*ROLLOUTS[:2], ns, ROLLOUTS[2], name)

    return read


def _rollout_selector(api: Any, target: KubeTarget, rollout: dict[str, Any], ns: str) -> Any:
    """Argo Rollouts: ``spec.selector``, or the one of the Deployment its ``workloadRef``
    names (the rollout then runs that Deployment's template)."""
    spec = rollout.get("spec") or {}
    if spec.get("selector"):
        return spec["selector"]
    ref = spec.get("workloadRef") or {}
    if ref.get("kind") == "Deployment" and ref.get("name"):
        from kubernetes import client

        deployment = call(
            f"get deployment/{ref['name']} (the workloadRef of {target})",
            client.AppsV1Api(api).read_namespaced_deployment,
            ref["name"],
            ns,
        )
        return api.sanitize_for_serialization(deployment.spec.selector)
    return None


def _cronjob_pods(api: Any, target: KubeTarget, ns: str) -> tuple[list[Any], str]:
    from kubernetes import client

    batch = client.BatchV1Api(api)
    cron = call(f"get {target}", _read(batch.read_namespaced_cron_job, target, ns))
    active = [ref.name for ref in (cron.status and cron.status.active) or []]
    if not active:
        raise TargetNotReady(f"target {target} in namespace {ns}: no running pod (no active Job)")
    pods: list[Any] = []
    core = client.CoreV1Api(api)
    for job_name in active:
        job = call(f"get job/{job_name} of {target}", batch.read_namespaced_job, job_name, ns)
        selector = label_selector(api.sanitize_for_serialization(job.spec.selector))
        if selector:
            pods += _pods(core, ns, selector)
    return pods, f"its active Jobs ({', '.join(active)})"


def choose_container(statuses: list[Any], wanted: str | None, default: str | None) -> Any:
    """The status of the container to target (see the module's docstring), or None."""
    if wanted:
        return next((s for s in statuses if s.name == wanted), None)
    if default:
        found = next((s for s in statuses if s.name == default), None)
        if found is not None:
            return found
    return next((s for s in statuses if s.name not in SIDECARS), statuses[0] if statuses else None)


def from_pod(target: KubeTarget, pod: Any) -> ResolvedTarget:
    """The target as this pod runs it; ``TargetNotReady`` says why it cannot be targeted."""
    meta, spec, status = pod.metadata, pod.spec, pod.status
    where = f"pod {meta.namespace}/{meta.name}"
    if meta.deletion_timestamp is not None:
        raise TargetNotReady(f"target {target}: {where} is being deleted")
    phase = status.phase if status else None
    if phase != "Running":
        raise TargetNotReady(f"target {target}: {where} is not running (phase {phase})")
    statuses = list((status and status.container_statuses) or [])
    default = (meta.annotations or {}).get(DEFAULT_CONTAINER_ANNOTATION)
    chosen = choose_container(statuses, target.container, default)
    if chosen is None:
        names = ", ".join(c.name for c in spec.containers) or "none"
        what = f"no container {target.container!r}" if target.container else "no container"
        raise TargetNotReady(f"target {target}: {where} has {what} (it has: {names})")
    if not chosen.ready or not chosen.container_id:
        raise TargetNotReady(f"target {target}: container {chosen.name} of {where} is not ready")
    runtime, sep, container_id = chosen.container_id.partition("://")
    if not sep or not container_id:
        raise TargetNotReady(
            f"target {target}: {where} reports an unknown container id {chosen.container_id!r}"
        )
    return ResolvedTarget(
        target=target,
        namespace=meta.namespace,
        pod=meta.name,
        pod_uid=meta.uid,
        node=spec.node_name or "",
        container=chosen.name,
        container_id=container_id,
        runtime=runtime,
        pod_ips=tuple(ip.ip for ip in (status.pod_ips or [])),
    )
