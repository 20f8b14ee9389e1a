"""The lab's services: the staging service (the target), its backends and dnsmasq.

Each runs in its namespace (`ip netns exec`, so /etc/netns files apply), logs to the lab's
folder, and is ready when its probe answers.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mirrord.lab import remote_files
from mirrord.lab.namespaces import LabError
from mirrord.lab.probes import probe_dns, probe_tcp, probe_udp
from mirrord.lab.tls import write_certs
from mirrord.lab.topology import DNS_NAMES

if TYPE_CHECKING:
    from mirrord.lab.lab import Lab

# The directory that contains the `mirrord` package (the repo root in a checkout).
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 10.0

# Exactly what the staging service (the "target process") sees; tests compare against it.
STAGING_ENV_TEMPLATE = {
    "STAGING_GREETING": "hello-from-staging",
    "DATABASE_URL": "postgres://db.staging.svc:5432/app",
    "SECRET_TOKEN": "s3cr3t",
    "SERVICE_NAME": "staging-service",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/root",
}


@dataclass
class Service:
    name: str
    ns: str
    argv: list[str]
    env: dict[str, str]
    probe: Callable[[], bool]
    proc: subprocess.Popen[bytes] | None = None


def lab_services(lab: Lab, certs_key: Path, certs_chain: Path) -> list[Service]:
    """Every process of the lab, the staging service (the target) first."""

    def server(kind: str, host: str, port: int, **opts: str) -> list[str]:
        argv = [sys.executable, "-u", "-m", "mirrord.lab.servers", kind]
        argv += ["--host", host, "--port", str(port)]
        for name, value in opts.items():
            argv += [f"--{name}", value]
        return argv

    # Other services get PYTHONPATH; the staging service gets exactly staging_env
    # (it imports via cwd = PACKAGE_ROOT instead) since the tool copies its environment.
    env = {"PATH": STAGING_ENV_TEMPLATE["PATH"], "PYTHONPATH": str(PACKAGE_ROOT)}
    stg, be, ba = lab.staging_ns, lab.backend_ns, lab.backend_addr
    lo = "127.0.0.1"
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    return [
        Service(
            "staging-service",
            stg,
            server(
                "text-http",
                lab.staging_addr,
                lab.service_port,
                body="staging-service",
                # a tmpfs with the target's files, in this service's mount namespace only
                **{"remote-files": remote_files.MOUNT_POINT},
            ),
            lab.staging_env,
            lambda: probe_tcp(lab.staging_addr, lab.service_port),
        ),
        Service(
            "backend-http",
            be,
            server("json-http", ba, lab.service_port, service="backend"),
            env,
            lambda: probe_tcp(ba, lab.service_port),
        ),
        Service(
            "backend-udp",
            be,
            server("udp-echo", ba, lab.udp_port, prefix="echo:"),
            env,
            lambda: probe_udp(ba, lab.udp_port),
        ),
        Service(
            "backend-tls",
            be,
            server(
                "tls-http",
                ba,
                lab.tls_port,
                service="backend-tls",
                cert=str(certs_chain),
                key=str(certs_key),
            ),
            env,
            lambda: probe_tcp(ba, lab.tls_port),
        ),
        Service(
            "staging-loopback",
            stg,
            server("text-http", lo, lab.loopback_port, body="staging-loopback"),
            env,
            lambda: probe_tcp(lo, lab.loopback_port),
        ),
        Service(
            "staging-loopback-udp",
            stg,
            server("udp-echo", lo, lab.udp_port, prefix="loopback-echo:"),
            env,
            lambda: probe_udp(lo, lab.udp_port),
        ),
        Service(
            "dnsmasq",
            stg,
            [
                dnsmasq,
                "--keep-in-foreground",
                "--conf-file=/dev/null",  # ignore /etc/dnsmasq.conf(.d)
                "--no-resolv",  # no upstream: unknown names fail instead of leaking out
                "--no-hosts",  # only the names below (the /etc/hosts name is NSS-only)
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--port=53",
                # host-record (not --address=/name/ip): AAAA gets NODATA instead of
                # REFUSED, and PTR works; --address=/#/ makes every other name
                # NXDOMAIN instead of REFUSED (there is no upstream).
                f"--host-record={','.join(DNS_NAMES)},{ba}",
                "--address=/#/",
                f"--pid-file={lab.tmpdir / 'dnsmasq.pid'}",
                "--log-facility=-",  # stderr, i.e. the log file
                "--log-queries",
            ],
            {"PATH": STAGING_ENV_TEMPLATE["PATH"]},
            lambda: probe_dns(DNS_NAMES[0], ba),
        ),
    ]


def _start(lab: Lab, svc: Service) -> None:
    with open(lab.log_path(svc.name), "wb") as log:
        svc.proc = subprocess.Popen(
            [shutil.which("ip") or "ip", "netns", "exec", svc.ns, *svc.argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=svc.env,
            cwd=PACKAGE_ROOT,
            close_fds=True,
            start_new_session=True,  # Ctrl-C in the terminal is for the caller, not these
        )
    lab.adopt(svc.proc)
    lab.pids[svc.name] = svc.proc.pid


def start_services(lab: Lab) -> None:
    """Start every service and wait until each one answers its probe."""
    # Certificates first (the only slow step, ~0.2 s once per process) so the
    # TLS backend can start alongside the others.
    certs = write_certs(lab.tmpdir)
    lab.ca_pem = certs.ca_pem
    services = lab_services(lab, certs.key_pem, certs.cert_pem)
    staging_service, others = services[0], services[1:]
    # The staging service must be the oldest process in staging: tools pick the
    # oldest process of a namespace as the target. Start times have clock-tick
    # (10 ms) resolution, so leave a gap before starting anything else there.
    _start(lab, staging_service)
    assert staging_service.proc is not None
    lab.service_pid = staging_service.proc.pid
    started = time.monotonic()
    for svc in others:
        if svc.ns == lab.staging_ns:
            time.sleep(max(0.0, started + 0.03 - time.monotonic()))
        _start(lab, svc)
    _wait_ready(lab, services)


def _wait_ready(lab: Lab, services: list[Service]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    pending = list(services)
    while True:
        for svc in services:
            assert svc.proc is not None
            if svc.proc.poll() is not None:
                raise LabError(
                    f"lab service {svc.name} exited with code {svc.proc.returncode}: "
                    f"{_last_log_line(lab, svc.name)}"
                )
        for ns in lab.namespaces:
            here = [svc for svc in pending if svc.ns == ns]
            if here:
                ready = lab.call_in(ns, lambda here=here: [s for s in here if s.probe()])
                pending = [svc for svc in pending if svc not in ready]
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(svc.name for svc in pending)
            raise LabError(f"lab services not ready after {READY_TIMEOUT:.0f} s: {names}")
        time.sleep(0.01)


def _last_log_line(lab: Lab, name: str) -> str:
    try:
        lines = lab.log_path(name).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"
