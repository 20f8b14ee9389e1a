"""The intproxy's link to a cluster agent: a Kubernetes port-forward that the intproxy
opens itself, on its own event loop (``ws_forward``: the API server's websocket, through
the kubeconfig's proxy if it names one), with no thread or socket pair in between.

A forward that breaks ends the intproxy's link, and ``AgentForward.why_ended`` says which
forward broke and what the kubelet said on its error channel, so the app's calls fail
with that message instead of waiting.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import IO

from mirrord.kube.client import Cluster, KubeAccess, connect
from mirrord.kube.errors import KubeError
from mirrord.kube.ws_forward import PortForwardCarrier, open_port_forward, target_of

_ADDRESS = re.compile(r"kube:([a-z0-9][-a-z0-9.]*)/([a-z0-9][-a-z0-9.]*):(\d{1,5})")


class ForwardError(OSError):
    """The port-forward could not be opened (its text is the whole story)."""


@dataclass(frozen=True)
class ForwardAddress:
    namespace: str
    pod: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ForwardAddress:
        m = _ADDRESS.fullmatch(text)
        if m is None:
            raise ForwardError(f"not a kube agent address: {text!r} (kube:NAMESPACE/POD:PORT)")
        return cls(m.group(1), m.group(2), int(m.group(3)))

    def __str__(self) -> str:
        return f"pod {self.namespace}/{self.pod} port {self.port}"


_clusters: dict[KubeAccess, Cluster] = {}


def cluster_for(access: KubeAccess) -> Cluster:
    """The client for ``access``, loaded once per process."""
    if access not in _clusters:
        try:
            _clusters[access] = connect(access)
        except KubeError as exc:
            raise ForwardError(str(exc)) from None
    return _clusters[access]


def wait_for_agent(access: KubeAccess, stdin: IO[str] | None = None) -> tuple[str, str] | None:
    """For an intproxy started before its agent (``PENDING_AGENT``): load the client and
    the kubeconfig now, then read the agent's address and token from ``stdin`` (None if
    the CLI gave up and closed it)."""
    # importing the client's models is the slow part (~1 s): do it now
    from kubernetes import client

    client.CoreV1Api(cluster_for(access).api)
    line = (stdin or sys.stdin).readline()
    if not line.strip():
        return None
    try:
        doc = json.loads(line)
        return str(doc["address"]), str(doc["token"])
    except (ValueError, KeyError, TypeError):
        raise ForwardError(f"unexpected agent announcement: {line[:100]!r}") from None


@dataclass
class AgentForward:
    """Our end of the forward (the intproxy's Link's carrier) and what the forward can
    tell when it ends."""

    stream: PortForwardCarrier
    address: ForwardAddress

    def why_ended(self) -> str:
        said = self.stream.error
        detail = f": {' '.join(said.split())}" if said else ""
        return f"the port-forward to {self.address} ended{detail}"


async def connect_forward(text: str, access: KubeAccess) -> AgentForward:
    """A stream to the agent at ``kube:NAMESPACE/POD:PORT`` (see the module's docstring)."""
    address = ForwardAddress.parse(text)
    configuration = cluster_for(access).api.configuration
    doing = f"create pods/portforward for pod {address.namespace}/{address.pod}"
    try:
        target = target_of(configuration, address.namespace, address.pod, address.port)
        carrier = await open_port_forward(target, address.port, doing)
    except (KubeError, ValueError, OSError) as exc:  # OSError: the kubeconfig's certificates
        raise ForwardError(str(exc)) from None
    return AgentForward(carrier, address)
