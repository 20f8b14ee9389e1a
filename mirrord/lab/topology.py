"""The lab's shape: two namespaces per slot, their links, addresses and /etc files.

One lab (slot ``s``) is::

    host ── mrd{s}h 198.18.{2s}.1/30 ══ mrd{s}s 198.18.{2s}.2/30 ── [mrd{s}-stg] staging
    staging ── mrd{s}sb 198.18.{2s+1}.1/30 ══ mrd{s}b 198.18.{2s+1}.2/30 ── [mrd{s}-be] backend

The host has no route to the backend /30 (it falls into ``unreachable 198.18.0.0/15``),
staging does not forward, and no namespace has a default route: the backend and the
``*.staging.svc`` names are only reachable from inside staging. Everything lives in
198.18.0.0/15 (RFC 2544 benchmarking range), so nothing can leak to a real network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mirrord.lab.namespaces import ETC_NETNS, ip_batch

LAB_NET = "198.18.0.0/15"
DNS_NAMES = ("backend.staging.svc", "tls.staging.svc", "db.staging.svc")
HOSTS_ONLY_NAME = "hosts-only.staging.svc"

# Bind-mounted over /etc/nsswitch.conf in staging so name lookups go through the
# lab's /etc/hosts and dnsmasq even on hosts whose nsswitch uses systemd-resolved
# (whose unix socket is not network-namespaced and would answer from the host).
NSSWITCH = """\
passwd: files
group: files
shadow: files
hosts: files dns
networks: files
protocols: files
services: files
ethers: files
rpc: files
"""


@dataclass(eq=False)
class Topology:
    """Names and addresses of slot ``slot``; `build_links` and `write_etc` make them."""

    slot: int
    service_port: int = 8080
    loopback_port: int = 9090
    udp_port: int = 9999
    tls_port: int = 8443

    @property
    def staging_ns(self) -> str:
        return f"mrd{self.slot}-stg"

    @property
    def backend_ns(self) -> str:
        return f"mrd{self.slot}-be"

    @property
    def host_addr(self) -> str:
        return f"198.18.{2 * self.slot}.1"

    @property
    def staging_addr(self) -> str:
        return f"198.18.{2 * self.slot}.2"

    @property
    def staging_backend_addr(self) -> str:
        return f"198.18.{2 * self.slot + 1}.1"

    @property
    def backend_addr(self) -> str:
        return f"198.18.{2 * self.slot + 1}.2"

    @property
    def host_veth(self) -> str:
        return f"mrd{self.slot}h"

    @property
    def staging_veth(self) -> str:
        return f"mrd{self.slot}s"

    @property
    def staging_backend_veth(self) -> str:
        return f"mrd{self.slot}sb"

    @property
    def backend_veth(self) -> str:
        return f"mrd{self.slot}b"

    @property
    def namespaces(self) -> tuple[str, str]:
        return (self.staging_ns, self.backend_ns)

    @property
    def etc_dirs(self) -> tuple[Path, Path]:
        return (ETC_NETNS / self.staging_ns, ETC_NETNS / self.backend_ns)

    @property
    def service_url(self) -> str:
        """The staging service, reachable from the host."""
        return f"http://{self.staging_addr}:{self.service_port}"

    @property
    def dns_names(self) -> dict[str, str]:
        """Names that resolve inside staging only (via dnsmasq or /etc/hosts)."""
        return {name: self.backend_addr for name in (*DNS_NAMES, HOSTS_ONLY_NAME)}

    def ns(self, ns: str) -> str:
        """A namespace by role ("staging", "backend") or by its own name."""
        return {"staging": self.staging_ns, "backend": self.backend_ns}.get(ns, ns)

    def build_links(self) -> None:
        """The two namespaces, their veth pairs and addresses (three `ip -batch` runs)."""
        ip_batch(
            [
                f"route replace unreachable {LAB_NET}",
                f"netns add {self.staging_ns}",
                f"netns add {self.backend_ns}",
                f"link add {self.host_veth} type veth peer name {self.staging_veth}"
                f" netns {self.staging_ns}",
                f"link add {self.staging_backend_veth} netns {self.staging_ns} type veth"
                f" peer name {self.backend_veth} netns {self.backend_ns}",
                f"addr add {self.host_addr}/30 dev {self.host_veth}",
                f"link set dev {self.host_veth} up",
            ]
        )
        ip_batch(
            [
                "link set dev lo up",
                f"addr add {self.staging_addr}/30 dev {self.staging_veth}",
                f"link set dev {self.staging_veth} up",
                f"addr add {self.staging_backend_addr}/30 dev {self.staging_backend_veth}",
                f"link set dev {self.staging_backend_veth} up",
            ],
            ns=self.staging_ns,
        )
        ip_batch(
            [
                "link set dev lo up",
                f"addr add {self.backend_addr}/30 dev {self.backend_veth}",
                f"link set dev {self.backend_veth} up",
            ],
            ns=self.backend_ns,
        )

    def write_etc(self) -> None:
        # `ip netns exec` bind-mounts /etc/netns/<ns>/* over /etc/*, so these are what
        # processes in staging see as /etc/resolv.conf etc.
        etc = ETC_NETNS / self.staging_ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        (etc / "hosts").write_text(
            f"127.0.0.1 localhost\n::1 localhost\n{self.backend_addr} {HOSTS_ONLY_NAME}\n"
        )
        (etc / "nsswitch.conf").write_text(NSSWITCH)
