"""A session's agent in a Kubernetes cluster (beside ``local_agent.py`` for this host):
resolve the target, join the agent its other sessions use or start one, and hand the
intproxy what it needs to reach it through a port-forward."""

from __future__ import annotations

from dataclasses import dataclass, field

from mirrord.config import MirrordConfig
from mirrord.kube.agent import AgentPod, find_agent, require, start_agent
from mirrord.kube.agent_spec import AgentSettings
from mirrord.kube.client import Cluster, KubeAccess, connect
from mirrord.kube.resolve import ResolvedTarget, resolve
from mirrord.launch.progress import Progress
from mirrord.targets.path import parse_kube_target


@dataclass(frozen=True)
class KubeAgentHandle:
    """What ``start.py`` needs of an agent, like ``local_agent.AgentHandle``."""

    pod: AgentPod
    target: ResolvedTarget
    access: KubeAccess
    cluster: Cluster = field(repr=False, compare=False)

    @property
    def address(self) -> str:
        return self.pod.address

    @property
    def token(self) -> str:
        return self.pod.token

    @property
    def started(self) -> bool:
        return self.pod.started

    @property
    def proxy_args(self) -> list[str]:
        return self.access.args()

    def failure_hint(self) -> str:
        return (
            f"the agent runs in pod {self.pod.namespace}/{self.pod.pod} "
            f"(kubectl logs -n {self.pod.namespace} {self.pod.pod} -c {self.pod.container})"
        )


def access_of(cfg: MirrordConfig) -> KubeAccess:
    return KubeAccess(cfg.kubeconfig, cfg.kube_context)


def uses_cluster(cfg: MirrordConfig, target: str) -> bool:
    """A Kubernetes target, or ``targetless`` with a cluster named (a namespace, a
    kubeconfig or context): plain ``targetless`` stays on this host."""
    from mirrord.targets.path import is_kube_target

    if is_kube_target(target):
        return True
    if target.strip() not in ("", "targetless"):
        return False
    return any((cfg.target.namespace, cfg.kubeconfig, cfg.kube_context, cfg.agent.namespace))


def kube_agent_for(
    cfg: MirrordConfig, target: str, progress: Progress, *, fresh: bool = False
) -> KubeAgentHandle:
    """The agent for ``target`` (``fresh``: a new one even if one runs already)."""
    access = access_of(cfg)
    progress.step(f"resolving target {target}")
    cluster = connect(access)
    namespace = cfg.target.namespace or cluster.namespace
    resolved = resolve(cluster.api, parse_kube_target(target), namespace)
    settings = AgentSettings.from_config(cfg.agent)
    agent_ns = resolved.namespace if settings.ephemeral else settings.namespace or namespace
    # the port-forward's websocket upgrade is a GET, which the API server also checks as create
    for verb in ("create", "get"):
        require(cluster.api, agent_ns, verb, "pods/portforward", "cannot reach an agent")
    pod = None if fresh else find_agent(cluster.api, settings, resolved)
    if pod is not None:
        progress.step(f"joining the agent in pod {pod.namespace}/{pod.pod}")
    else:
        progress.step("creating agent")
        pod = start_agent(
            cluster.api,
            settings,
            resolved,
            report=lambda what: progress.step(f"waiting for {what}"),
        )
    return KubeAgentHandle(pod, resolved, access, cluster)
