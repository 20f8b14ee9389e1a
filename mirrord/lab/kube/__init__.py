"""A real Kubernetes control plane for the tests (etcd, kube-apiserver, kwok,
kube-controller-manager on 127.0.0.1), built from source by ``scripts/kube-binaries``.

- ``binaries``: the cache of built binaries, and how they are built (stdlib only)
- ``pki``: openssl CA, certificates, service-account keys, kubeconfigs
- ``stages``: kwok's stage configuration, adjusted for the lab
- ``processes``: free ports, child processes, health probes
- ``control_plane``: ``KubeLab``, starting and stopping the whole stack
- ``resources``: nodes, pods, played pod status, kwok port-forwards, RBAC through the API
"""

from mirrord.lab.kube.binaries import Binaries, BinariesMissing
from mirrord.lab.kube.control_plane import KubeLab
from mirrord.lab.kube.processes import StartError
from mirrord.lab.kube.stages import PLAYED_NODE_PREFIX

__all__ = ["PLAYED_NODE_PREFIX", "Binaries", "BinariesMissing", "KubeLab", "StartError"]
