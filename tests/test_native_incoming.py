"""A non-Python server receives the target's traffic through the relay alone: busybox's
httpd under `mirrord exec --steal` (whole port, and with an HTTP header filter), and in
mirror mode. Real iptables in the lab, real clients from this host."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from helpers import REPO, stop_process

from mirrord.lab import Lab

pytestmark = pytest.mark.usefixtures("transport")


class Busybox:
    """`busybox httpd` on port 8080 under mirrord, serving one page; -vv logs each request
    with the client address as the server sees it (accept/getpeername)."""

    def __init__(self, lab: Lab, tmp_path: Path, *flags: str) -> None:
        root = tmp_path / "www"
        root.mkdir()
        (root / "index.html").write_text("local-busybox\n")
        self.log = tmp_path / "httpd.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mirrord", "exec", "-t", f"netns/{lab.staging_ns}", *flags,
             "--", "busybox", "httpd", "-f", "-vv", "-p", "8080", "-h", str(root)],
            stdout=subprocess.DEVNULL, stderr=self.log.open("w"), cwd=REPO,
        )  # fmt: skip

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM)


@pytest.fixture
def busybox(lab: Lab, tmp_path: Path) -> Iterator:
    started: list[Busybox] = []

    def start(*flags: str) -> Busybox:
        started.append(Busybox(lab, tmp_path, *flags))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def eventually(fetch, expected: str, timeout: float = 20.0) -> str:  # type: ignore[no-untyped-def]
    """The answer once it is `expected` (the server needs a moment to subscribe)."""
    deadline = time.monotonic() + timeout
    answer = ""
    while time.monotonic() < deadline:
        try:
            answer = fetch()
        except requests.RequestException:
            answer = ""
        if answer == expected:
            return answer
        time.sleep(0.2)
    return answer


def nat_rules(lab: Lab) -> str:
    return lab.run_in(lab.staging_ns, ["iptables-save", "-t", "nat"]).stdout


def test_busybox_httpd_receives_stolen_traffic(lab: Lab, busybox) -> None:
    server = busybox("--steal")
    url = f"http://{lab.staging_addr}:8080/index.html"
    assert (
        eventually(lambda: requests.get(url, timeout=5).text, "local-busybox\n")
        == "local-busybox\n"
    )
    for _ in range(5):
        assert requests.get(url, timeout=5).text == "local-busybox\n"
    # busybox saw the real client (this host, by way of staging), not the intproxy
    # (busybox listens on IPv6 as well: an IPv4 client shows as ::ffff:a.b.c.d)
    clients = {
        re.sub(r"^\[?(::ffff:)?|\]?:\d+$", "", line.split(": ")[0])
        for line in server.lines()
        if "url:/index.html" in line
    }
    assert clients == {lab.host_addr}, server.lines()
    server.stop()
    deadline = time.monotonic() + 10
    while "MIRRORD_" in nat_rules(lab) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "MIRRORD_" not in nat_rules(lab)
    assert requests.get(f"http://{lab.staging_addr}:8080/", timeout=5).text == "staging-service"


def test_busybox_httpd_with_an_http_header_filter(lab: Lab, busybox, tmp_path: Path) -> None:
    config = tmp_path / "mirrord.json"
    config.write_text(json.dumps({"feature": {"network": {"incoming": {
        "mode": "steal", "http_filter": {"header_filter": "x-route: local"}}}}}))  # fmt: skip
    busybox("-f", str(config))
    url = f"http://{lab.staging_addr}:8080/index.html"

    def routed() -> str:
        return requests.get(url, headers={"x-route": "local"}, timeout=5).text

    assert eventually(routed, "local-busybox\n") == "local-busybox\n"
    # the rest stays the staging service's
    assert requests.get(url, timeout=5).text == "staging-service"
    assert requests.get(url, headers={"x-route": "other"}, timeout=5).text == "staging-service"
    assert routed() == "local-busybox\n"


def test_busybox_httpd_receives_mirrored_requests(lab: Lab, busybox) -> None:
    server = busybox()
    url = f"http://{lab.staging_addr}:8080/"

    def mirrored() -> str:
        # the client keeps the staging service's answer; busybox gets a copy
        assert requests.get(url + "index.html?probe", timeout=5).text == "staging-service"
        return "seen" if any("url:/index.html" in line for line in server.lines()) else ""

    assert eventually(mirrored, "seen") == "seen", server.lines()
