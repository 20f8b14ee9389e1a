"""Is a lab service answering yet? One quick probe per kind of service."""

from __future__ import annotations

import socket

from mirrord.lab.dns import dns_query_a


def probe_tcp(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def probe_udp(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.connect((host, port))
            sock.send(b"ready?")
            return sock.recv(4096).endswith(b"ready?")
        except OSError:  # ICMP port unreachable (ConnectionRefusedError) or timeout
            return False


def probe_dns(name: str, expect: str) -> bool:
    try:
        return expect in dns_query_a(name, timeout=0.2)
    except OSError:
        return False
