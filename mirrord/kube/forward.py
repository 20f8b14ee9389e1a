"""The intproxy's link to a cluster agent: a Kubernetes port-forward, opened by the
intproxy itself with the official client, as an anyio byte stream.

``kubernetes.stream.portforward`` runs one thread per forward that moves bytes between
the API server's websocket and one end of a socket pair; the other end is ours, wrapped
for the event loop. Nothing else sits in between (no local TCP hop, no extra process).

A forward that breaks ends the intproxy's link, and ``AgentForward.why_ended`` says which
forward broke and what the API server or kubelet said, so the app's calls fail with
that message instead of waiting: when the websocket closes the client closes our end,
and when its thread dies of an error (it then closes nothing) we shut our end down.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
from dataclasses import dataclass
from typing import IO, Any

import anyio

from mirrord.kube.client import Cluster, KubeAccess, connect
from mirrord.kube.errors import KubeError, describe_api_error

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
    from kubernetes.stream import portforward  # noqa: F401

    client.CoreV1Api(cluster_for(access).api)
    line = (stdin or sys.stdin).readline()
    if not line.strip():
        return None
    try:
        doc = json.loads(line)
        return str(doc["address"]), str(doc["token"])
    except (ValueError, KeyError, TypeError):
        raise ForwardError(f"unexpected agent announcement: {line[:100]!r}") from None


def open_forward(address: ForwardAddress, access: KubeAccess) -> tuple[socket.socket, Any]:
    """Blocking: our end of a new port-forward, and the client's PortForward object."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from kubernetes.stream import portforward
    from websocket import WebSocketException

    core = client.CoreV1Api(cluster_for(access).api)
    try:
        pf = portforward(
            core.connect_get_namespaced_pod_portforward,
            address.pod,
            address.namespace,
            ports=str(address.port),
        )
    except (ApiException, WebSocketException, OSError) as exc:
        doing = f"create pods/portforward for pod {address.namespace}/{address.pod}"
        raise ForwardError(str(describe_api_error(exc, doing))) from None
    # the client's wrapper only hides TCP options a socket pair lacks; the socket is ours
    return pf.socket(address.port)._socket, pf


@dataclass
class AgentForward:
    """Our end of the forward (a connected stream socket, for the intproxy's Link) and
    what the forward can tell when it ends."""

    sock: socket.socket
    pf: Any  # the client's PortForward: its thread and its error channel
    address: ForwardAddress

    def why_ended(self) -> str:
        said = self.pf.error(self.address.port)
        detail = f": {' '.join(said.split())}" if said else ""
        return f"the port-forward to {self.address} ended{detail}"


async def connect_forward(text: str, access: KubeAccess) -> AgentForward:
    """A socket to the agent at ``kube:NAMESPACE/POD:PORT`` (see the module's docstring)."""
    address = ForwardAddress.parse(text)
    before = set(threading.enumerate())
    sock, pf = await anyio.to_thread.run_sync(open_forward, address, access)
    started = [t for t in set(threading.enumerate()) - before if "port forward" in t.name]
    for thread in started:
        threading.Thread(target=_end_with, args=(thread, sock), daemon=True).start()
    return AgentForward(sock, pf, address)


def _end_with(thread: threading.Thread, sock: socket.socket) -> None:
    """When the forward's thread ends, so does our end: it closes it only on a clean
    websocket close, and an error in it would leave us waiting for ever."""
    thread.join()
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed already
