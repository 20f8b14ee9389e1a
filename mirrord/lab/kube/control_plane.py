"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kwok (nodes and
"kubelets"), kube-controller-manager. No scheduler: pods name their node.

    with KubeLab.start(tmp_path) as kube:
        kube.add_node("node-1")
        kube.create_pod(kube.pod_manifest("web", "node-1"))

Everything lives in one temporary directory (certificates, etcd's data, logs), removed by
``close()``, which ``start()`` also calls when a component fails to come up.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from mirrord.lab.kube import resources
from mirrord.lab.kube.binaries import Binaries, find
from mirrord.lab.kube.pki import Pki, create_pki, write_kubeconfig
from mirrord.lab.kube.processes import (
    LOOPBACK,
    Component,
    free_port,
    http_get,
    https_get,
    probe_ok,
    stop_all,
)
from mirrord.lab.kube.stages import PLAYED_NODE_PREFIX, write_config
from mirrord.system.procfs import process_start

TMP_PREFIX = "mirrord-kube-"
# Only labels objects: nothing routes it (the `kubernetes` Service gets the first address).
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# kwok renews no node Lease unless told how long one lasts; without Leases the
# controller-manager marks nodes NotReady after its grace period (~50 s).
NODE_LEASE_SECONDS = 40
KWOK_CRDS = ("PortForward", "ClusterPortForward", "Logs", "ClusterLogs")
READY_TIMEOUT = 60.0  # a loaded 2-core CI machine: the apiserver alone is ~3 s idle


def _crd_file(kind: str) -> str:
    plural = kind.lower() if kind.endswith("s") else kind.lower() + "s"  # Logs -> logs
    return f"kwok.x-k8s.io_{plural}.yaml"


OWNER_FILE = "owner.json"


def _write_owner(d: Path) -> None:
    pid = os.getpid()
    (d / OWNER_FILE).write_text(json.dumps({"pid": pid, "start": process_start(pid)}))


def remove_stale_dirs(base: Path) -> list[Path]:
    """Remove lab directories under ``base`` whose creating process is gone (a ``kill -9``
    leaves them; its children died with it). Returns what was removed."""
    removed = []
    for d in base.glob(f"{TMP_PREFIX}*"):
        try:
            owner = json.loads((d / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # being created right now, or not ours
        if process_start(owner.get("pid", -1)) != owner.get("start"):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


@dataclass(eq=False)
class KubeLab:
    """A running control plane. Make one with :meth:`start`; ``close()`` ends it."""

    dir: Path
    binaries: Binaries
    pki: Pki
    api_port: int
    kubeconfig: Path  # admin (system:masters), certificate embedded
    components: list[Component] = field(default_factory=list)
    # component -> port on 127.0.0.1 (etcd, etcd-peer, kwok, kube-controller-manager)
    ports: dict[str, int] = field(default_factory=dict)
    keep_dir: bool = False  # MIRRORD_KUBE_KEEP=1: leave the directory (logs) for a post-mortem
    timings: dict[str, float] = field(default_factory=dict)  # seconds, for the docs and logs
    _closed: bool = field(default=False, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _admin: client.ApiClient | None = field(default=None, init=False, repr=False)

    # ---- lifecycle

    @classmethod
    def start(
        cls,
        tmpdir: Path | str | None = None,
        *,
        binaries: Binaries | None = None,
        timeout: float = READY_TIMEOUT,
    ) -> KubeLab:
        """Start the control plane in a new directory under ``tmpdir`` (default: the
        system's); ready when it returns (~4 s warm). Raises ``BinariesMissing`` if
        ``scripts/kube-binaries`` has not built the binaries, ``StartError`` if a
        component does not come up (with the tail of its log)."""
        binaries = binaries or find()
        t0 = time.monotonic()
        base = Path(tmpdir) if tmpdir is not None else Path(tempfile.gettempdir())
        remove_stale_dirs(base)
        d = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=base))
        _write_owner(d)
        lab: KubeLab | None = None
        try:
            pki = create_pki(d / "pki", service_ip=SERVICE_IP)
            api_port = free_port()
            kubeconfig = pki.kubeconfig(d / "admin.kubeconfig", f"https://{LOOPBACK}:{api_port}")
            keep = os.environ.get("MIRRORD_KUBE_KEEP") == "1"
            lab = cls(d, binaries, pki, api_port, kubeconfig, keep_dir=keep)
            lab.timings["pki"] = time.monotonic() - t0
            atexit.register(lab.close)
            lab._start_all(timeout)
            lab.timings["total"] = time.monotonic() - t0
            return lab
        except BaseException:
            if lab is not None:
                lab.close()
            else:
                shutil.rmtree(d, ignore_errors=True)
            raise

    @property
    def etcd_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['etcd']}"

    def _component(self, name: str, argv: Sequence[str | Path]) -> Component:
        c = Component(name, [str(a) for a in argv], self.dir / f"{name}.log")
        self.components.append(c)
        c.start()
        return c

    def _start_all(self, timeout: float) -> None:
        etcd = self._start_etcd(timeout)
        self.timings["etcd"] = etcd.ready_after or 0.0
        api = self._start_apiserver(timeout)
        self.timings["kube-apiserver"] = api.ready_after or 0.0
        t = time.monotonic()
        self._create_kwok_crds(timeout)
        self.timings["crds"] = time.monotonic() - t
        kwok = self._start_kwok()
        kcm = self._start_controller_manager()
        for c in (kwok, kcm):
            # their serving certificates are their own (kcm's is self-signed): not verified
            c.wait_until(
                probe_ok(partial(https_get, LOOPBACK, self.ports[c.name], "/healthz")),
                timeout,
                "healthy",
            )
            self.timings[c.name] = c.ready_after or 0.0

    def _start_etcd(self, timeout: float) -> Component:
        self.ports["etcd"], self.ports["etcd-peer"] = free_port(), free_port()
        peer = f"http://{LOOPBACK}:{self.ports['etcd-peer']}"
        url = self.etcd_url
        etcd = self._component(
            "etcd",
            [
                self.binaries.etcd,
                "--name=lab",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=lab={peer}",
                "--initial-cluster-state=new",
                # one member on loopback: elections need not wait for a network (1 s -> 0.2 s)
                "--heartbeat-interval=10",
                "--election-timeout=100",
                "--unsafe-no-fsync",  # a throwaway store: no fsync per write
                "--log-level=warn",
            ],
        )
        etcd.wait_until(
            probe_ok(partial(http_get, LOOPBACK, self.ports["etcd"], "/health")), timeout, "healthy"
        )
        return etcd

    def _start_apiserver(self, timeout: float) -> Component:
        p = self.pki
        api = self._component(
            "kube-apiserver",
            [
                self.binaries.kube_apiserver,
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={LOOPBACK}",
                f"--advertise-address={LOOPBACK}",
                f"--secure-port={self.api_port}",
                f"--cert-dir={self.dir / 'apiserver-certs'}",
                f"--tls-cert-file={p.apiserver.cert}",
                f"--tls-private-key-file={p.apiserver.key}",
                f"--client-ca-file={p.ca.cert}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",  # the agent runs privileged
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={p.sa_pub}",
                f"--service-account-signing-key-file={p.sa_key}",
                # pods would wait for the controller-manager's `default` ServiceAccount
                "--disable-admission-plugins=ServiceAccount",
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={p.kubelet_client.cert}",
                f"--kubelet-client-key={p.kubelet_client.key}",
                f"--kubelet-certificate-authority={p.ca.cert}",
                "--endpoint-reconciler-type=none",  # no endpoints for 127.0.0.1 in `kubernetes`
                "--profiling=false",
            ],
        )
        cert = (p.admin.cert, p.admin.key)
        api.wait_until(
            probe_ok(
                lambda: https_get(LOOPBACK, self.api_port, "/readyz", ca=p.ca.cert, cert=cert)
            ),
            timeout,
            "ready (/readyz)",
        )
        return api

    def _create_kwok_crds(self, timeout: float) -> None:
        # kwok does not install its CRDs; its informers for a missing CRD fail in a loop.
        ext = client.ApiextensionsV1Api(self.api_client())
        names = []
        for kind in KWOK_CRDS:
            doc = yaml.safe_load((self.binaries.kwok_crd_dir / _crd_file(kind)).read_text())
            ext.create_custom_resource_definition(
                resources.model(client.V1CustomResourceDefinition, doc)
            )
            names.append(doc["metadata"]["name"])

        def established(crd: Any) -> bool:
            conds = (crd.status and crd.status.conditions) or []
            return any(c.type == "Established" and c.status == "True" for c in conds)

        for name in names:
            resources.wait_for(
                f"CRD {name} established",
                partial(ext.read_custom_resource_definition, name),
                established,
                timeout,
            )

    def _start_kwok(self) -> Component:
        port = self.ports["kwok"] = free_port()
        cfg = write_config(self.binaries.kwok_stage_dir, self.dir / "kwok-stages.yaml")
        return self._component(
            "kwok",
            [
                self.binaries.kwok,
                f"--kubeconfig={self.kubeconfig}",
                f"--config={cfg}",
                "--manage-all-nodes=true",
                f"--node-ip={resources.NODE_IP}",
                f"--node-port={port}",  # the nodes' "kubelet" endpoint: kwok's server
                f"--server-address={LOOPBACK}:{port}",
                f"--tls-cert-file={self.pki.kwok.cert}",
                f"--tls-private-key-file={self.pki.kwok.key}",
                f"--enable-crds={','.join(KWOK_CRDS)}",
                f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
            ],
        )

    def _start_controller_manager(self) -> Component:
        self.ports["kube-controller-manager"] = free_port()
        kc = self.kubeconfig
        return self._component(
            "kube-controller-manager",
            [
                self.binaries.kube_controller_manager,
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={self.ports['kube-controller-manager']}",
                f"--cert-dir={self.dir / 'kcm-certs'}",
                "--leader-elect=false",
                "--authentication-skip-lookup=true",
                # controllers act as the admin; per-controller accounts would need tokens first
                "--use-service-account-credentials=false",
                f"--service-account-private-key-file={self.pki.sa_key}",
                f"--root-ca-file={self.pki.ca.cert}",
                "--controllers=*",
            ],
        )

    def close(self) -> None:
        """Stop every component and remove the directory (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
        # etcd last: the others write to it until they stop
        others = [c for c in self.components if c.name != "etcd"]
        stop_all(others)
        stop_all([c for c in self.components if c.name == "etcd"])
        if self.keep_dir:
            # no owner: the next start must not take the kept logs for a crash's leftovers
            (self.dir / OWNER_FILE).unlink(missing_ok=True)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> KubeLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- clients

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.api_port}"

    def configuration(self, token: str | None = None) -> client.Configuration:
        """A client configuration: the admin's certificate, or a bearer ``token``."""
        c = client.Configuration()
        c.host = self.server
        c.ssl_ca_cert = str(self.pki.ca.cert)
        if token is None:
            c.cert_file = str(self.pki.admin.cert)
            c.key_file = str(self.pki.admin.key)
        else:
            # the key every client version looks up (37 also knows it as "BearerToken")
            c.api_key = {"authorization": token}
            c.api_key_prefix = {"authorization": "Bearer"}
        return c

    def api_client(self, token: str | None = None) -> client.ApiClient:
        """The admin's ``ApiClient`` (shared), or a new one authenticating with ``token``."""
        if token is not None:
            return client.ApiClient(self.configuration(token))
        if self._admin is None:
            self._admin = client.ApiClient(self.configuration())
        return self._admin

    def client_from_kubeconfig(self, path: Path | None = None) -> client.ApiClient:
        """An ``ApiClient`` loaded the way the CLI will load one: from a kubeconfig file."""
        return config.new_client_from_config(config_file=str(path or self.kubeconfig))

    def write_token_kubeconfig(self, path: Path, token: str, user: str = "sa") -> Path:
        return write_kubeconfig(path, self.server, self.pki.ca.cert, token=token, user=user)

    def log_path(self, component: str) -> Path:
        return self.dir / f"{component}.log"

    # ---- helpers (resources.py, with the admin client)

    played_node_prefix = PLAYED_NODE_PREFIX
    pod_manifest = staticmethod(resources.pod_manifest)
    container = staticmethod(resources.container)

    def add_node(self, name: str, **kw: Any) -> Any:
        return resources.add_node(self.api_client(), name, **kw)

    def add_played_node(self, name: str, **kw: Any) -> Any:
        """A node whose pods' status the harness writes (``play_pod_running``)."""
        if not name.startswith(PLAYED_NODE_PREFIX):
            name = PLAYED_NODE_PREFIX + name
        return resources.add_node(self.api_client(), name, played=True, **kw)

    def create_pod(self, manifest: Mapping[str, Any]) -> Any:
        return resources.create_pod(self.api_client(), manifest)

    def wait_pod(self, name: str, namespace: str = "default", **kw: Any) -> Any:
        return resources.wait_pod(self.api_client(), name, namespace, **kw)

    def set_pod_status(self, name: str, namespace: str, status: Mapping[str, Any]) -> Any:
        return resources.set_pod_status(self.api_client(), name, namespace, status)

    def play_pod_running(self, name: str, namespace: str = "default", **kw: Any) -> dict[str, str]:
        return resources.play_pod_running(self.api_client(), name, namespace, **kw)

    def set_port_forward(
        self, pod: str, namespace: str, targets: Mapping[int, resources.ForwardTarget]
    ) -> dict[str, Any]:
        return resources.set_port_forward(self.api_client(), pod, namespace, targets)

    def service_account_token(self, name: str, namespace: str = "default", **kw: Any) -> str:
        return resources.service_account_token(self.api_client(), name, namespace, **kw)
