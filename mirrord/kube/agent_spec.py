"""The agent's Kubernetes objects, as manifests: a Job pinned to the target's node (or an
ephemeral container in the target pod), and the Secret holding its session token.

Pure functions of the settings and the resolved target, so that every combination of
``agent.*`` options can be checked by the API server itself (a server-side dry run).
The shape follows mirrord's (``mirrord/kube/src/api/container``): ``app: mirrord`` labels,
``hostPID``, only the capabilities the agent needs, ``ttlSecondsAfterFinished`` = ``ttl``,
the mesh opt-out annotations, and the same defaults.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mirrord import __version__
from mirrord.kube.resolve import ResolvedTarget

AGENT_CONTAINER = "mirrord-agent"
#: The agent image (Dockerfile.agent); ``agent.image`` replaces it.
IMAGE_REPOSITORY = "ghcr.io/mirrord-py/mirrord-agent"
DEFAULT_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}"
#: The image's entry point, spelled out so the pod spec says what runs.
AGENT_COMMAND = ("python3", "-m", "mirrord.agent")
TOKEN_ENV = "MIRRORD_AGENT_TOKEN"
TOKEN_KEY = "token"
#: Namespace, mount and packet capture of the target; iptables; reading its /proc.
CAPABILITIES = ("NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE")
# mirrord's defaults, with more memory: a Python agent (interpreter, scapy) needs it
DEFAULT_RESOURCES = {
    "requests": {"cpu": "1m", "memory": "1Mi"},
    "limits": {"cpu": "1", "memory": "256Mi"},
}
DEFAULT_TOLERATIONS = ({"operator": "Exists"},)
MESH_OPT_OUT_LABELS = {"kuma.io/sidecar-injection": "disabled"}
MESH_OPT_OUT_ANNOTATIONS = {"sidecar.istio.io/inject": "false", "linkerd.io/inject": "disabled"}

APP_LABEL = ("app", "mirrord")
#: Sessions of one target find its agent by this label (a digest of pod uid + container).
TARGET_LABEL = "mirrord/target"
PORT_ANNOTATION = "mirrord/port"
PORTS = range(30000, 60000)
_LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class AgentSettings:
    """``agent.*`` resolved, with mirrord's defaults."""

    namespace: str | None = None  # None: the target's
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    ttl: int = 1
    startup_timeout: float = 60.0
    communication_timeout: float = 30.0
    privileged: bool = False
    disabled_capabilities: tuple[str, ...] = ()
    tolerations: tuple[Mapping[str, Any], ...] | None = None  # None: tolerate every taint
    resources: Mapping[str, Any] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    service_account: str | None = None
    priority_class: str | None = None
    security_context: Mapping[str, Any] | None = None  # the pod's (apparmor, seccomp)
    disable_mesh_sidecar_injection: bool = True
    ephemeral: bool = False
    log_level: str = "info"

    @classmethod
    def from_config(cls, agent: Any) -> AgentSettings:
        """From the config's ``agent`` section (``mirrord.config.schema.agent.AgentConfig``)."""
        image = agent.image
        if image is not None and not isinstance(image, str):
            image = f"{image.registry or IMAGE_REPOSITORY}:{image.tag or __version__}"
        security = None
        if agent.security_context is not None:
            security = {
                _camel(k): {_camel(a): b for a, b in v.items()}
                for k, v in agent.security_context.model_dump(exclude_none=True).items()
            }
        level = (agent.log_level or "info").lower()
        defaults = cls()
        return cls(
            namespace=agent.namespace,
            image=image or DEFAULT_IMAGE,
            image_pull_policy=agent.image_pull_policy or defaults.image_pull_policy,
            image_pull_secrets=tuple(s.name for s in agent.image_pull_secrets or ()),
            ttl=agent.ttl,
            startup_timeout=float(agent.startup_timeout or defaults.startup_timeout),
            communication_timeout=float(
                agent.communication_timeout or defaults.communication_timeout
            ),
            privileged=bool(agent.privileged),
            disabled_capabilities=tuple(agent.disabled_capabilities or ()),
            tolerations=None if agent.tolerations is None else tuple(agent.tolerations),
            resources=agent.resources,
            labels=dict(agent.labels or {}),
            annotations=dict(agent.annotations or {}),
            node_selector=dict(agent.node_selector or {}),
            service_account=agent.service_account,
            priority_class=agent.priority_class,
            security_context=security,
            disable_mesh_sidecar_injection=agent.disable_mesh_sidecar_injection is not False,
            ephemeral=bool(agent.ephemeral),
            log_level=level if level in _LOG_LEVELS else "info",
        )

    def capabilities(self) -> list[str]:
        return [c for c in CAPABILITIES if c not in self.disabled_capabilities]


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass(frozen=True)
class AgentPlan:
    """What one agent is called and where it listens (chosen once, used by every spec)."""

    name: str
    namespace: str
    port: int
    token_secret: str

    @classmethod
    def new(cls, namespace: str) -> AgentPlan:
        alphabet = string.ascii_lowercase + string.digits
        name = f"{AGENT_CONTAINER}-" + "".join(secrets.choice(alphabet) for _ in range(10))
        return cls(name, namespace, secrets.choice(PORTS), name)


def target_key(target: ResolvedTarget) -> str:
    """The label value that tells one target's agent from another's."""
    ident = f"{target.namespace}/{target.pod_uid}/{target.container}"
    return hashlib.sha256(ident.encode()).hexdigest()[:20]


def agent_args(settings: AgentSettings, target: ResolvedTarget, plan: AgentPlan) -> list[str]:
    where = "targetless" if target.targetless else f"container/{target.container_id}"
    return [
        "--target",
        where,
        "--listen",
        f"127.0.0.1:{plan.port}",
        "--idle-timeout",
        str(settings.ttl),
        "--first-client-timeout",
        str(int(settings.communication_timeout)),
        "--log-level",
        settings.log_level,
    ]


def token_env(plan: AgentPlan) -> list[dict[str, Any]]:
    """The token comes from the Secret: the pod spec names it, never holds it."""
    ref = {"name": plan.token_secret, "key": TOKEN_KEY}
    return [{"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": ref}}]


def _container_security(settings: AgentSettings) -> dict[str, Any]:
    return {
        "privileged": settings.privileged,
        "runAsUser": 0,  # entering namespaces and iptables need root in the container
        "capabilities": {"add": settings.capabilities()},
    }


def _labels(settings: AgentSettings, target: ResolvedTarget) -> dict[str, str]:
    labels = dict(settings.labels)
    if settings.disable_mesh_sidecar_injection:
        labels.update(MESH_OPT_OUT_LABELS)
    labels[APP_LABEL[0]] = APP_LABEL[1]
    if not target.targetless:
        labels[TARGET_LABEL] = target_key(target)
    return labels


def job_manifest(
    settings: AgentSettings, target: ResolvedTarget, plan: AgentPlan
) -> dict[str, Any]:
    """The agent Job: pinned to the target's node with hostPID (targetless: anywhere,
    unprivileged), gone ``ttl`` seconds after the agent exits."""
    labels = _labels(settings, target)
    annotations = dict(settings.annotations)
    if settings.disable_mesh_sidecar_injection:
        annotations.update(MESH_OPT_OUT_ANNOTATIONS)
    container: dict[str, Any] = {
        "name": AGENT_CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(AGENT_COMMAND),
        "args": agent_args(settings, target, plan),
        "env": token_env(plan),
        "resources": dict(settings.resources or DEFAULT_RESOURCES),
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # the agent never calls the API: no token of the pod's service account in it
        "automountServiceAccountToken": False,
        "containers": [container],
    }
    if not target.targetless:
        container["securityContext"] = _container_security(settings)
        pod_spec["nodeName"] = target.node
        pod_spec["hostPID"] = True
        tolerations = DEFAULT_TOLERATIONS if settings.tolerations is None else settings.tolerations
        pod_spec["tolerations"] = [dict(t) for t in tolerations]
    elif settings.tolerations is not None:
        pod_spec["tolerations"] = [dict(t) for t in settings.tolerations]
    if settings.node_selector:
        pod_spec["nodeSelector"] = dict(settings.node_selector)
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in settings.image_pull_secrets]
    if settings.priority_class:
        pod_spec["priorityClassName"] = settings.priority_class
    if settings.security_context:
        pod_spec["securityContext"] = dict(settings.security_context)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": plan.name,
            "namespace": plan.namespace,
            "labels": labels,
            **({"annotations": annotations} if annotations else {}),
        },
        "spec": {
            "ttlSecondsAfterFinished": settings.ttl,
            "backoffLimit": 0,
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {**annotations, PORT_ANNOTATION: str(plan.port)},
                },
                "spec": pod_spec,
            },
        },
    }


def ephemeral_container(
    settings: AgentSettings, target: ResolvedTarget, plan: AgentPlan
) -> dict[str, Any]:
    """The agent as an ephemeral container of the target pod (its network namespace;
    the target container's process namespace)."""
    return {
        "name": plan.name,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(AGENT_COMMAND),
        "args": agent_args(settings, target, plan),
        "env": token_env(plan),
        "targetContainerName": target.container,
        "securityContext": _container_security(settings),
    }


def token_secret(
    plan: AgentPlan, token: str, owner: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The Secret the agent reads its token from; ``owner`` (the Job, or the target pod)
    takes it along when it is deleted."""
    metadata: dict[str, Any] = {
        "name": plan.token_secret,
        "namespace": plan.namespace,
        "labels": {APP_LABEL[0]: APP_LABEL[1]},
    }
    if owner is not None:
        metadata["ownerReferences"] = [owner_reference(owner)]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata,
        "stringData": {TOKEN_KEY: token},
    }


def owner_reference(owner: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["name"],
        "uid": owner["uid"],
        "blockOwnerDeletion": False,
    }
