"""The Kubernetes lab itself: a real control plane (etcd, kube-apiserver, kwok,
kube-controller-manager) on 127.0.0.1, built by scripts/kube-binaries.

Missing binaries fail (not skip) these tests: CI runs scripts/kube-binaries first.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import portforward

from mirrord.lab.kube import KubeLab, StartError, binaries, resources
from mirrord.lab.kube.binaries import BinariesMissing
from mirrord.lab.kube.control_plane import remove_stale_dirs
from mirrord.lab.kube.processes import clean_env
from mirrord.system.procfs import process_start

NS = "default"


@pytest.fixture(scope="module")
def built() -> binaries.Binaries:
    try:
        return binaries.find()
    except BinariesMissing as exc:  # a failure, not a skip: CI builds them first
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def kube(built: binaries.Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeLab]:
    with KubeLab.start(tmp_path_factory.mktemp("kube"), binaries=built) as lab:
        yield lab


@pytest.fixture(scope="module")
def node(kube: KubeLab) -> str:
    kube.add_node("node-1")
    return "node-1"


@pytest.fixture(scope="module")
def played_node(kube: KubeLab) -> str:
    return str(kube.add_played_node("played-1").metadata.name)


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.peers.append(self.client_address[0])  # type: ignore[attr-defined]
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int, list[str]]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    server.peers = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_address[1], server.peers  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def recv_exactly(sock: Any, n: int, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, f"connection closed after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def played_pod(kube: KubeLab, name: str, node: str, port: int) -> dict[str, str]:
    kube.create_pod(kube.pod_manifest(name, node, ports=[port]))
    return kube.play_pod_running(name, NS)


# ---------------------------------------------------------------- the control plane


def test_apiserver_reports_its_version_and_kubeconfig_works(kube: KubeLab) -> None:
    api = kube.client_from_kubeconfig()  # the way the CLI will load it
    version = client.VersionApi(api).get_code()
    assert version.git_version == binaries.KUBERNETES_VERSION
    names = {n.metadata.name for n in client.CoreV1Api(api).list_namespace().items}
    assert {"default", "kube-system", "kube-node-lease"} <= names
    assert kube.server.startswith("https://127.0.0.1:")


def test_node_becomes_ready_with_addresses_and_lease(kube: KubeLab, node: str) -> None:
    core = client.CoreV1Api(kube.api_client())
    got = core.read_node(node)
    assert resources.node_ready(got)
    addresses = {(a.type, a.address) for a in got.status.addresses}
    # Hostname comes from our node stages (kwok's own leave it out under --manage-all-nodes)
    assert addresses == {("InternalIP", "127.0.0.1"), ("Hostname", node)}
    leases = client.CoordinationV1Api(kube.api_client())
    lease = resources.wait_for(
        "node lease",
        lambda: leases.read_namespaced_lease(node, "kube-node-lease"),
        lambda lease: lease.spec.renew_time is not None,
    )
    # held by the kwok process (its own id, not the node's name) for --node-lease-duration-seconds
    assert lease.spec.holder_identity
    assert lease.spec.lease_duration_seconds == 40


def test_kwok_managed_pod_becomes_running(kube: KubeLab, node: str) -> None:
    kube.create_pod(kube.pod_manifest("kwok-pod", node, ports=[80]))
    pod = kube.wait_pod("kwok-pod", NS)
    assert pod.status.container_statuses[0].ready
    assert pod.status.pod_ip


def test_played_pod_gets_the_status_the_harness_writes(
    kube: KubeLab, node: str, played_node: str
) -> None:
    kube.create_pod(kube.pod_manifest("played-pod", played_node))
    # a kwok pod created after it is Running long before we look at the played one
    kube.create_pod(kube.pod_manifest("control-pod", node))
    kube.wait_pod("control-pod", NS)
    time.sleep(0.3)
    core = client.CoreV1Api(kube.api_client())
    untouched = core.read_namespaced_pod("played-pod", NS)
    assert untouched.status.phase == "Pending"
    assert not untouched.status.container_statuses

    ids = kube.play_pod_running("played-pod", NS, pod_ip="198.18.0.2")
    time.sleep(0.3)  # kwok must not overwrite it either
    pod = core.read_namespaced_pod("played-pod", NS)
    assert pod.status.phase == "Running"
    assert pod.status.pod_ip == "198.18.0.2"
    ready = {c.type: c.status for c in pod.status.conditions}
    assert ready["Ready"] == ready["ContainersReady"] == "True"
    (status,) = pod.status.container_statuses
    assert status.container_id == f"containerd://{ids['main']}"
    assert len(ids["main"]) == 64 and status.state.running is not None


def test_job_creates_a_pod_and_finishes(kube: KubeLab, node: str) -> None:
    batch = client.BatchV1Api(kube.api_client())
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "one-shot"},
        "spec": {
            "ttlSecondsAfterFinished": 0,  # the agent Job cleans up after itself this way
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "nodeName": node,
                    "restartPolicy": "Never",
                    "containers": [resources.container()],
                }
            },
        },
    }
    batch.create_namespaced_job(NS, resources.model(client.V1Job, job))
    core = client.CoreV1Api(kube.api_client())
    pods = resources.wait_for(
        "the Job's pod",
        lambda: core.list_namespaced_pod(NS, label_selector="job-name=one-shot").items,
        bool,
    )
    assert pods[0].metadata.owner_references[0].kind == "Job"
    # kwok completes it (pod-complete), the Job controller sees it succeed, the TTL
    # controller deletes the finished Job
    resources.wait_for(
        "the Job gone after its TTL",
        lambda: [j.metadata.name for j in batch.list_namespaced_job(NS).items],
        lambda names: "one-shot" not in names,
        timeout=30,
    )


# ---------------------------------------------------------------- port-forward


def test_port_forward_through_the_apiserver_echoes_both_ways(
    kube: KubeLab, played_node: str, echo_server: tuple[str, int, list[str]]
) -> None:
    host, port, peers = echo_server
    played_pod(kube, "echo", played_node, 8080)
    kube.set_port_forward("echo", NS, {8080: (host, port)})
    core = client.CoreV1Api(kube.api_client())
    t0 = time.monotonic()
    pf = portforward(core.connect_get_namespaced_pod_portforward, "echo", NS, ports="8080")
    sock = pf.socket(8080)
    try:
        sock.sendall(b"hello")
        assert recv_exactly(sock, 5) == b"hello"
        first = time.monotonic() - t0
        payload = os.urandom(1 << 20)
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        assert recv_exactly(sock, len(payload)) == payload
        sender.join()
    finally:
        sock.close()
        pf.close()
    assert peers and set(peers) == {"127.0.0.1"}  # kwok connected on loopback only
    assert first < 5, first


def test_service_account_without_portforward_is_refused_403(
    kube: KubeLab, played_node: str, echo_server: tuple[str, int, list[str]]
) -> None:
    host, port, _ = echo_server
    played_pod(kube, "guarded", played_node, 9000)
    kube.set_port_forward("guarded", NS, {9000: (host, port)})
    admin = kube.api_client()
    for sa, rules in (
        ("viewer", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]),
        (
            "forwarder",
            [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
                {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["create", "get"]},
            ],
        ),
    ):
        resources.create_service_account(admin, sa, NS)
        resources.grant(admin, sa, NS, rules)

    viewer = client.CoreV1Api(kube.api_client(token=kube.service_account_token("viewer")))
    assert viewer.read_namespaced_pod("guarded", NS).status.phase == "Running"
    with pytest.raises(ApiException) as refused:
        portforward(viewer.connect_get_namespaced_pod_portforward, "guarded", NS, ports="9000")
    # the stream helper wraps the websocket's refusal: status 0, the HTTP status in the text
    # and on the websocket exception it came from
    assert "403 Forbidden" in str(refused.value.reason)
    assert getattr(refused.value.__context__, "status_code", None) == 403
    with pytest.raises(ApiException) as denied:
        viewer.delete_namespaced_pod("guarded", NS)
    assert denied.value.status == 403

    token = kube.service_account_token("forwarder")
    path = kube.write_token_kubeconfig(kube.dir / "forwarder.kubeconfig", token)
    forwarder = client.CoreV1Api(kube.client_from_kubeconfig(path))
    pf = portforward(forwarder.connect_get_namespaced_pod_portforward, "guarded", NS, ports="9000")
    sock = pf.socket(9000)
    try:
        sock.sendall(b"allowed")
        assert recv_exactly(sock, 7) == b"allowed"
    finally:
        sock.close()
        pf.close()


# ---------------------------------------------------------------- the harness


def test_missing_binaries_name_the_build_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIRRORD_KUBE_CACHE", str(tmp_path))
    with pytest.raises(BinariesMissing, match="scripts/kube-binaries"):
        KubeLab.start(tmp_path)


def test_children_get_no_etcd_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCD_DATA_DIR", "/nowhere")
    monkeypatch.setenv("KUBECONFIG", "/nowhere")
    monkeypatch.setenv("https_proxy", "http://192.0.2.1:3128")
    env = clean_env()
    assert not {"ETCD_DATA_DIR", "KUBECONFIG", "https_proxy"} & set(env)


def test_failed_start_cleans_up(tmp_path: Path) -> None:
    real = binaries.entry()
    fake = binaries.Binaries(tmp_path / "fake")
    fake.bin_dir.mkdir(parents=True)
    for name in binaries.BINARIES:
        (fake.bin_dir / name).write_text("#!/bin/sh\necho 'no such luck' >&2\nexit 3\n")
        (fake.bin_dir / name).chmod(0o755)
    assert fake.root != real.root
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(StartError, match="(?s)etcd died.*no such luck"):
        KubeLab.start(work, binaries=fake)
    assert list(work.iterdir()) == []


def test_a_killed_owners_directory_is_removed_by_the_next_start(tmp_path: Path) -> None:
    stale = tmp_path / "mirrord-kube-stale"
    stale.mkdir()
    (stale / "owner.json").write_text('{"pid": 2147483647, "start": 1}')  # no such process
    mine = tmp_path / "mirrord-kube-mine"
    mine.mkdir()
    (mine / "owner.json").write_text(
        json.dumps({"pid": os.getpid(), "start": process_start(os.getpid())})
    )
    assert remove_stale_dirs(tmp_path) == [stale]
    assert mine.exists() and not stale.exists()


def test_close_stops_everything_and_removes_its_directory(
    built: binaries.Binaries, tmp_path: Path
) -> None:
    lab = KubeLab.start(tmp_path, binaries=built)
    pids = [c.pid for c in lab.components]
    port = lab.api_port
    assert {c.name for c in lab.components} == {
        "etcd",
        "kube-apiserver",
        "kwok",
        "kube-controller-manager",
    }
    lab.close()
    assert not lab.dir.exists()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()  # stopped and reaped
    with socket.socket() as s:
        # no listener left (SO_REUSEADDR: its closed connections may linger in TIME_WAIT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
    lab.close()  # idempotent
