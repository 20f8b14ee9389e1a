"""The intproxy's own port-forward (mirrord/kube/ws_forward.py): a Link over the API
server's websocket, driven by the event loop. Against the lab's real API server and kwok
(cert and token kubeconfigs, RBAC, the kubelet's error channel), and against a real
websocket server (the ``websockets`` library's) that answers with garbage.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import pytest
import yaml
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from mirrord.kube.client import KubeAccess, connect
from mirrord.kube.errors import KubeError
from mirrord.kube.forward import AgentForward, ForwardAddress
from mirrord.kube.ws_forward import SUBPROTOCOL, ForwardTarget, open_port_forward, target_of
from mirrord.lab.kube import KubeLab, resources
from mirrord.protocol import Data, Ping
from mirrord.wire.link import Link
from tests.native_services import wait_until
from tests.test_kube_lab import NS, built, echo_server, kube, played_node, played_pod

__all__ = ["built", "echo_server", "kube", "played_node"]  # fixtures, used by name


def forward_target(kube: KubeLab, pod: str, port: int, token: str | None = None) -> ForwardTarget:
    api = kube.api_client(token=token) if token else kube.api_client()
    target = target_of(api.configuration, NS, pod, port)
    assert target is not None
    return target


async def open_link(target: ForwardTarget, port: int) -> Link:
    return Link(await open_port_forward(target, port, "forward"))


def echo_pod(kube: KubeLab, name: str, node: str, port: int, echo: tuple[str, int, object]) -> None:
    """A played pod whose ``port`` forwards to the echo server."""
    played_pod(kube, name, node, port)
    kube.set_port_forward(name, NS, {port: (echo[0], echo[1])})


def echo_once(target: ForwardTarget, port: int, data: bytes) -> object:
    """One Data frame there and back over a new forward."""

    async def main() -> object:
        link = await open_link(target, port)
        link.send_data(5, data)
        with anyio.fail_after(10):
            msg = await link.receive()
        await link.aclose()
        return msg

    return anyio.run(main)


def test_a_link_carries_big_and_small_frames_both_ways_intact(
    kube: KubeLab, played_node: str, echo_server: tuple[str, int, list[str]]
) -> None:
    echo_pod(kube, "ws-echo", played_node, 8080, echo_server)
    rng = random.Random(7)
    payloads = [rng.randbytes(rng.choice([1, 100, 5000, 70_000, 256 * 1024])) for _ in range(120)]
    sent = hashlib.sha256(b"".join(payloads)).hexdigest()

    async def main() -> tuple[str, int]:
        link = await open_link(forward_target(kube, "ws-echo", 8080), 8080)
        got = hashlib.sha256()
        frames = 0
        done = asyncio.Event()
        total = sum(len(p) for p in payloads)
        seen = 0

        def on_frame(msg: object) -> bool:
            nonlocal frames, seen
            if isinstance(msg, Data):
                got.update(msg.data)
                frames += 1
                seen += len(msg.data)
                if seen == total:
                    done.set()
                return True
            return False

        link.frame_handler = on_frame
        link.start()
        for i, payload in enumerate(payloads):
            link.send_data(i, payload)  # far faster than the echo: the carrier backs up
            await link.drain()
        await link.send(Ping(seq=1))
        with anyio.fail_after(60):
            await done.wait()
            assert await link.receive() == Ping(seq=1)  # after every Data: order kept
        await link.aclose()
        return got.hexdigest(), frames

    digest, frames = anyio.run(main)
    assert digest == sent
    assert frames == len(payloads)


def test_a_token_without_portforward_is_refused_naming_it_and_one_with_it_works(
    kube: KubeLab, played_node: str, echo_server: tuple[str, int, list[str]]
) -> None:
    echo_pod(kube, "ws-guarded", played_node, 9000, echo_server)
    admin = kube.api_client()
    pods = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}
    forward = {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["create", "get"]}
    for sa, rules in (("ws-viewer", [pods]), ("ws-forwarder", [pods, forward])):
        resources.create_service_account(admin, sa, NS)
        resources.grant(admin, sa, NS, rules)

    viewer = forward_target(kube, "ws-guarded", 9000, kube.service_account_token("ws-viewer"))
    with pytest.raises(KubeError) as refused:
        anyio.run(open_link, viewer, 9000)
    text = str(refused.value)
    assert text.startswith("cannot forward: forbidden by RBAC:"), text
    # the upgrade is a GET: RBAC checks the get verb (kubectl's SPDY POST needs create)
    assert 'cannot get resource "pods/portforward"' in text, text
    assert refused.value.status == 403

    token = kube.service_account_token("ws-forwarder")
    target = forward_target(kube, "ws-guarded", 9000, token)
    assert target.authorization == f"Bearer {token}"

    assert echo_once(target, 9000, b"allowed") == Data(conn=5, data=b"allowed")


def test_the_kubelets_error_ends_the_link_and_says_why(kube: KubeLab, played_node: str) -> None:
    played_pod(kube, "ws-closed", played_node, 7000)
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    kube.set_port_forward("ws-closed", NS, {7000: ("127.0.0.1", closed_port)})

    async def main() -> tuple[BaseException, str]:
        carrier = await open_port_forward(forward_target(kube, "ws-closed", 7000), 7000, "f")
        link = Link(carrier)
        link.send_data(1, b"anyone?")
        with anyio.fail_after(20), pytest.raises(Exception) as ended:
            await link.receive()
        why = AgentForward(carrier, ForwardAddress(NS, "ws-closed", 7000)).why_ended()
        await link.aclose()
        return ended.value, why

    ended, why = anyio.run(main)
    assert isinstance(ended, (anyio.EndOfStream, OSError)), ended
    assert why.startswith(f"the port-forward to pod {NS}/ws-closed port 7000 ended: "), why
    assert f"failed to dial 127.0.0.1:{closed_port}" in why and "connection refused" in why, why


# ------------------------------------------------------- a websocket server's garbage


@pytest.fixture
def garbage_server() -> Iterator[tuple[ForwardTarget, dict[str, object]]]:
    """A real websocket server on loopback whose behaviour each test sets in ``mode``."""
    mode: dict[str, object] = {}
    ready: asyncio.Future[int] | None = None

    def process_request(conn: ServerConnection, request: Request) -> Response | None:
        if mode.get("status"):
            body = b'{"kind":"Status","message":"the pod is not running"}'
            return Response(int(str(mode["status"])), "Nope", Headers(), body)
        return None

    def select_subprotocol(conn: ServerConnection, offered: object) -> object:
        return None if mode.get("no_subprotocol") else SUBPROTOCOL

    async def handler(conn: ServerConnection) -> None:
        for frame in mode.get("send", []):  # type: ignore[attr-defined]
            await conn.send(frame)
        await conn.wait_closed()

    stop = None

    async def run() -> None:
        nonlocal stop
        stop = asyncio.Event()
        async with serve(
            handler,
            "127.0.0.1",
            0,
            process_request=process_request,
            select_subprotocol=select_subprotocol,  # type: ignore[arg-type]
        ) as server:
            assert ready is not None
            ready.set_result(server.sockets[0].getsockname()[1])
            await stop.wait()

    import threading

    loop = asyncio.new_event_loop()
    ready = loop.create_future()
    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(asyncio.wait_for(asyncio.shield(ready), 10), loop)
    target = ForwardTarget(
        host="127.0.0.1",
        port=port.result(10),
        url=f"ws://127.0.0.1:{port.result()}/api/v1/namespaces/x/pods/p/portforward?ports=80",
        tls=None,
        server_hostname=None,
        authorization=None,
    )
    try:
        yield target, mode
    finally:
        loop.call_soon_threadsafe(lambda: stop.set() if stop else None)  # type: ignore[union-attr]
        thread.join(10)


HEADERS = [b"\x00\x50\x00", b"\x01\x50\x00"]  # the ports' headers: port 80 on both channels


@pytest.mark.parametrize(
    "frames, says",
    [
        ([*HEADERS, "text, not binary"], "unexpected TEXT frame"),
        ([*HEADERS, b"\x07stray"], "data on channel 7"),
        ([b"\x00\x51\x00"], "is for port 81, not 80"),
        ([*HEADERS, b""], "a message without a channel"),
    ],
)
def test_garbage_from_the_websocket_ends_the_link_with_what_was_wrong(
    garbage_server: tuple[ForwardTarget, dict[str, object]], frames: list[object], says: str
) -> None:
    target, mode = garbage_server
    mode["send"] = frames

    async def main() -> BaseException:
        # garbage that came with the upgrade's answer fails the open, later garbage the link
        try:
            link = await open_link(target, 80)
        except KubeError as exc:
            return exc
        with anyio.fail_after(10), pytest.raises(Exception) as ended:
            await link.receive()
        await link.aclose()
        return ended.value

    ended = anyio.run(main)
    assert isinstance(ended, (ConnectionError, KubeError)), repr(ended)
    assert says in str(ended)


def test_data_after_the_headers_arrives_even_with_the_upgrades_answer(
    garbage_server: tuple[ForwardTarget, dict[str, object]],
) -> None:
    target, mode = garbage_server
    from mirrord.protocol.codec import encode

    mode["send"] = [*HEADERS, b"\x00" + encode(Ping(seq=9))]

    async def main() -> object:
        link = await open_link(target, 80)
        with anyio.fail_after(10):
            msg = await link.receive()
        await link.aclose()
        return msg

    assert anyio.run(main) == Ping(seq=9)


@pytest.mark.parametrize(
    "setting, says",
    [
        ({"status": 503}, "the pod is not running"),
        ({"no_subprotocol": True}, "does not speak v4.channel.k8s.io port-forwards"),
    ],
)
def test_a_refused_upgrade_is_one_clear_error(
    garbage_server: tuple[ForwardTarget, dict[str, object]],
    setting: dict[str, object],
    says: str,
) -> None:
    target, mode = garbage_server
    mode.update(setting)
    with pytest.raises(KubeError) as refused:
        anyio.run(open_link, target, 80)
    assert says in str(refused.value)


def test_an_api_server_that_does_not_answer_is_named() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    target = ForwardTarget("127.0.0.1", port, f"ws://127.0.0.1:{port}/x", None, None, None)
    with pytest.raises(KubeError) as refused:
        anyio.run(open_link, target, 80)
    assert str(refused.value) == "cannot forward: the Kubernetes API does not answer"


# ------------------------------------------------------------------ an HTTP proxy


@pytest.fixture
def tinyproxy(tmp_path: Path, kube: KubeLab) -> Iterator[tuple[int, Path, Callable[[int], None]]]:
    """A real HTTP proxy (tinyproxy) on loopback; the callable restarts it allowing
    tunnels to one port only."""
    log = tmp_path / "tinyproxy.log"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    procs: list[subprocess.Popen[bytes]] = []

    def start(allowed_port: int) -> None:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        conf = tmp_path / "tinyproxy.conf"
        conf.write_text(
            f"Port {port}\nListen 127.0.0.1\nTimeout 60\nLogLevel Connect\n"
            f'LogFile "{log}"\nAllow 127.0.0.1\nConnectPort {allowed_port}\n'
        )
        procs.append(subprocess.Popen(["tinyproxy", "-d", "-c", str(conf)]))
        wait_until(lambda: _listening(port), what="tinyproxy listening")

    start(urlsplit(kube.server).port or 443)
    try:
        yield port, log, start
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_kubeconfigs_proxy_url_tunnels_the_forward_through_the_proxy(
    kube: KubeLab,
    played_node: str,
    echo_server: tuple[str, int, list[str]],
    tinyproxy: tuple[int, Path, Callable[[int], None]],
    tmp_path: Path,
) -> None:
    proxy_port, log, restart = tinyproxy
    echo_pod(kube, "ws-proxied", played_node, 8080, echo_server)
    doc = yaml.safe_load(kube.kubeconfig.read_text())
    doc["clusters"][0]["cluster"]["proxy-url"] = f"http://127.0.0.1:{proxy_port}"
    proxied = tmp_path / "proxied.kubeconfig"
    proxied.write_text(yaml.safe_dump(doc))
    configuration = connect(KubeAccess(str(proxied))).api.configuration
    target = target_of(configuration, NS, "ws-proxied", 8080)
    assert target.proxy is not None and target.proxy.port == proxy_port

    assert echo_once(target, 8080, b"through the proxy") == Data(conn=5, data=b"through the proxy")
    api_port = urlsplit(kube.server).port
    assert f"127.0.0.1:{api_port}" in log.read_text()  # the proxy made the tunnel

    # no_proxy names the API server: straight there, even with the proxy configured
    configuration.no_proxy = "localhost,127.0.0.0/8"
    assert target_of(configuration, NS, "ws-proxied", 8080).proxy is None

    # a proxy that refuses the tunnel: its answer, in one line
    restart(1)
    with pytest.raises(KubeError) as refused:
        anyio.run(open_link, target, 8080)
    text = str(refused.value)
    assert f"the proxy 127.0.0.1:{proxy_port} refused a tunnel to 127.0.0.1:{api_port}" in text
    assert "403" in text, text
