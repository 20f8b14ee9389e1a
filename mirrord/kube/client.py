"""The API client, from the user's kubeconfig as kubectl reads it (``KUBECONFIG``, else
``~/.kube/config``; ``kubeconfig``/``kube_context`` in mirrord.json, ``--context``), or
the pod's service account when mirrord itself runs in a cluster."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirrord.kube.errors import KubeError

#: The intproxy's agent address while the CLI is still making the agent: it then reads
#: ``{"address": "kube:NS/POD:PORT", "token": ...}`` on its stdin (``forward.wait_for_agent``).
PENDING_AGENT = "kube:pending"


@dataclass(frozen=True)
class KubeAccess:
    """Where the cluster is: a kubeconfig file (None: kubectl's default) and a context."""

    kubeconfig: str | None = None
    context: str | None = None

    def args(self) -> list[str]:
        """The same access for a helper process (the intproxy)."""
        out = []
        if self.kubeconfig:
            out += ["--kubeconfig", self.kubeconfig]
        if self.context:
            out += ["--kube-context", self.context]
        return out


@dataclass
class Cluster:
    """A loaded client and the namespace its context names (kubectl's default)."""

    api: Any  # kubernetes.client.ApiClient
    namespace: str
    context: str | None


def _default_files() -> list[str]:
    env = os.environ.get("KUBECONFIG")
    if env:
        return [p for p in env.split(os.pathsep) if p]
    return [str(Path("~/.kube/config").expanduser())]


def connect(access: KubeAccess) -> Cluster:
    """A client for the cluster ``access`` names; one-line errors for a missing or broken
    kubeconfig or an unknown context."""
    import yaml
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    path = os.path.expanduser(access.kubeconfig) if access.kubeconfig else None
    files = [path] if path else _default_files()
    if not any(Path(f).is_file() for f in files):
        if path is None and os.environ.get("KUBERNETES_SERVICE_HOST") and not access.context:
            return _in_cluster(client, config)
        shown = path or os.pathsep.join(files)
        raise KubeError(f"no kubeconfig at {shown}: set KUBECONFIG or `kubeconfig` in mirrord.json")
    try:
        contexts, active = config.list_kube_config_contexts(config_file=path)
        chosen = active
        if access.context:
            chosen = next((c for c in contexts if c.get("name") == access.context), None)
            if chosen is None:
                names = ", ".join(sorted(str(c.get("name")) for c in contexts)) or "none"
                raise KubeError(
                    f"no context {access.context!r} in the kubeconfig (it has: {names})"
                )
        configuration = client.Configuration()
        config.load_kube_config(
            config_file=path, context=access.context, client_configuration=configuration
        )
    except (ConfigException, yaml.YAMLError, OSError, ValueError) as exc:
        where = path or os.pathsep.join(files)
        first = " ".join(str(exc).split())
        raise KubeError(f"cannot load the kubeconfig {where}: {first[:300]}") from None
    configuration.retries = 1  # a dead API server fails in seconds, not after a minute
    namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
    return Cluster(client.ApiClient(configuration), namespace, (chosen or {}).get("name"))


def _in_cluster(client: Any, config: Any) -> Cluster:
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)
    ns_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    namespace = ns_file.read_text().strip() if ns_file.is_file() else "default"
    return Cluster(client.ApiClient(configuration), namespace, None)
