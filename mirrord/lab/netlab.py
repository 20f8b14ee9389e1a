"""A fake "staging cluster" built from Linux network namespaces.

One lab (slot ``s``) is::

    host ── mrd{s}h 198.18.{2s}.1/30 ══ mrd{s}s 198.18.{2s}.2/30 ── [mrd{s}-stg] staging
    staging ── mrd{s}sb 198.18.{2s+1}.1/30 ══ mrd{s}b 198.18.{2s+1}.2/30 ── [mrd{s}-be] backend

The host has no route to the backend /30 (it falls into ``unreachable 198.18.0.0/15``),
staging does not forward, and no namespace has a default route: the backend and the
``*.staging.svc`` names are only reachable from inside staging. Everything lives in
198.18.0.0/15 (RFC 2544 benchmarking range), so nothing can leak to a real network.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mirrord.lab import remote_files
from mirrord.lab.tls import write_certs
from mirrord.system.namespaces import thread_in_netns
from mirrord.system.procfs import process_start

T = TypeVar("T")

LAB_NET = "198.18.0.0/15"
MAX_SLOT = 127  # 198.18.{2s+1} must stay <= 198.18.255
STATE_DIR = Path("/run/mirrord-lab")  # lock file + one owner record per slot
NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
# The directory that contains the `mirrord` package (the repo root in a checkout).
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
TMP_PREFIX = "mirrord-lab-"

DNS_NAMES = ("backend.staging.svc", "tls.staging.svc", "db.staging.svc")
HOSTS_ONLY_NAME = "hosts-only.staging.svc"
READY_TIMEOUT = 10.0
KILL_GRACE = 2.0

# Exactly what the staging service (the "target process") sees; tests compare against it.
STAGING_ENV_TEMPLATE = {
    "STAGING_GREETING": "hello-from-staging",
    "DATABASE_URL": "postgres://db.staging.svc:5432/app",
    "SECRET_TOKEN": "s3cr3t",
    "SERVICE_NAME": "staging-service",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/root",
}

# Bind-mounted over /etc/nsswitch.conf in staging so name lookups go through the
# lab's /etc/hosts and dnsmasq even on hosts whose nsswitch uses systemd-resolved
# (whose unix socket is not network-namespaced and would answer from the host).
_NSSWITCH = """\
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


class LabError(RuntimeError):
    """The lab could not be built (the message is one readable line)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


# --------------------------------------------------------------------------- helpers


def _run(argv: Sequence[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), input=input, capture_output=True, text=True, check=False)


def _ip_batch(commands: Sequence[str], ns: str | None = None, force: bool = False) -> None:
    """Run several `ip` commands in one `ip -batch -` process (one fork instead of many)."""
    argv = ["ip"]
    if ns:
        argv += ["-n", ns]
    if force:
        argv.append("-force")  # keep going after errors (teardown of half-built labs)
    r = _run([*argv, "-batch", "-"], input="\n".join(commands) + "\n")
    if r.returncode and not force:
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise LabError(f"ip{' -n ' + ns if ns else ''} -batch failed: {last}")


def _netns_names() -> set[str]:
    # Same source as `ip netns list`, without a subprocess.
    try:
        return set(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return set()


def _link_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)  # in the calling thread's namespace (the host)
        return True
    except OSError:
        return False


def netns_pids(ns: str) -> list[int]:
    """Pids of all processes in network namespace ``ns`` (like `ip netns pids`)."""
    try:
        st = os.stat(NETNS_DIR / ns)
    except OSError:
        return []
    key = (st.st_dev, st.st_ino)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            pst = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (pst.st_dev, pst.st_ino) == key:
            pids.append(int(entry))
    return pids


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Move the *calling thread* into network namespace ``ns`` for the block.

    Only the network namespace changes: files and /etc/resolv.conf are the host's, so
    resolve names with ``Lab.run_in`` (a real `ip netns exec`), not here.
    """
    with thread_in_netns(NETNS_DIR / ns):
        yield


def call_in_netns(ns: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)`` in a fresh thread inside ``ns`` and return its result.

    A throwaway thread means the caller's thread can never be left in the wrong namespace.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            with in_netns(ns):
                box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns:{ns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def dns_query_a(
    name: str, server: str = "127.0.0.1", port: int = 53, timeout: float = 0.5
) -> list[str]:
    """Ask ``server`` for the A records of ``name`` (tiny stub resolver, no retries)."""
    qid = int.from_bytes(os.urandom(2), "big")
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    query = struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!2H", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query, (server, port))
        while True:
            reply = sock.recv(4096)
            if len(reply) >= 12 and struct.unpack("!H", reply[:2])[0] == qid:
                break
    _, flags, qd, an, _, _ = struct.unpack("!6H", reply[:12])
    if flags & 0xF:
        raise OSError(f"DNS rcode {flags & 0xF} for {name}")

    def skip_name(pos: int) -> int:
        while True:
            length = reply[pos]
            if length & 0xC0 == 0xC0:  # compression pointer ends the name
                return pos + 2
            if length == 0:
                return pos + 1
            pos += 1 + length

    pos = 12
    for _ in range(qd):
        pos = skip_name(pos) + 4
    addrs = []
    for _ in range(an):
        pos = skip_name(pos)
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", reply[pos : pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            addrs.append(socket.inet_ntoa(reply[pos : pos + 4]))
        pos += rdlen
    return addrs


# --------------------------------------------------------------------------- readiness probes


def _probe_tcp(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _probe_udp(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.connect((host, port))
            sock.send(b"ready?")
            return sock.recv(4096).endswith(b"ready?")
        except OSError:  # ICMP port unreachable (ConnectionRefusedError) or timeout
            return False


def _probe_dns(name: str, expect: str) -> bool:
    try:
        return expect in dns_query_a(name, timeout=0.2)
    except OSError:
        return False


@dataclass
class _Service:
    name: str
    ns: str
    argv: list[str]
    env: dict[str, str]
    probe: Callable[[], bool]
    proc: subprocess.Popen[bytes] | None = None


# --------------------------------------------------------------------------- slot bookkeeping


@contextlib.contextmanager
def _global_lock() -> Iterator[None]:
    # Serialises slot choice and stale cleanup across processes (demo + tests).
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _state_path(slot: int) -> Path:
    return STATE_DIR / f"mrd{slot}.json"


def _read_state(slot: int) -> dict[str, Any] | None:
    try:
        data = json.loads(_state_path(slot).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _owner_alive(state: dict[str, Any]) -> bool:
    pid = state.get("pid")
    return isinstance(pid, int) and process_start(pid) == state.get("start")


def _slot_in_use(slot: int, netns: set[str]) -> bool:
    return (
        f"mrd{slot}-stg" in netns
        or f"mrd{slot}-be" in netns
        or _link_exists(f"mrd{slot}h")
        or _state_path(slot).exists()
    )


def _known_slots() -> set[int]:
    slots = set()
    for name in _netns_names():
        if m := re.fullmatch(r"mrd(\d+)-(?:stg|be)", name):
            slots.add(int(m[1]))
    for _, name in socket.if_nameindex():
        if m := re.fullmatch(r"mrd(\d+)h", name):
            slots.add(int(m[1]))
    for path in STATE_DIR.glob("mrd*.json"):
        if m := re.fullmatch(r"mrd(\d+)\.json", path.name):
            slots.add(int(m[1]))
    return slots


def _cleanup_stale_locked(include_unowned: bool) -> list[int]:
    cleaned = []
    for slot in sorted(_known_slots()):
        state = _read_state(slot)
        if state is None and not include_unowned:
            continue  # not made by this module (or a record we cannot read): leave it
        if state is not None and _owner_alive(state):
            continue
        tmp = state.get("tmpdir") if state else None
        lab = Lab._for_slot(slot, Path(tmp) if isinstance(tmp, str) else None)
        lab._owns_state = True
        lab.close()
        cleaned.append(slot)
    return cleaned


def cleanup_stale_labs(include_unowned: bool = False) -> list[int]:
    """Tear down labs whose creating process is gone (e.g. after ``kill -9``).

    With ``include_unowned`` also removes ``mrd*-stg``/``mrd*-be`` namespaces (and
    ``mrd*h`` links) that have no owner record at all. Returns the cleaned slots.
    """
    if os.geteuid() != 0:
        raise LabError("the lab needs root (cleaning up network namespaces); not running as root")
    with _global_lock():
        return _cleanup_stale_locked(include_unowned)


# --------------------------------------------------------------------------- the lab


@dataclass(eq=False)  # a live resource: identity semantics, hashable
class Lab:
    """One fake staging cluster. Build with ``create_lab()``; tear down with ``close()``."""

    slot: int
    staging_ns: str
    backend_ns: str
    host_addr: str
    staging_addr: str
    staging_backend_addr: str
    backend_addr: str
    tmpdir: Path
    ca_pem: Path
    service_port: int = 8080
    loopback_port: int = 9090
    udp_port: int = 9999
    tls_port: int = 8443
    staging_env: dict[str, str] = field(default_factory=dict)
    service_pid: int = 0
    # service name -> pid, for every process the lab started
    pids: dict[str, int] = field(default_factory=dict)
    # files only the staging service sees (its own mount namespace): see remote_files.py
    remote_root: str = remote_files.ROOT
    _procs: list[subprocess.Popen[Any]] = field(default_factory=list, init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)
    _close_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _owns_state: bool = field(default=False, init=False, repr=False)
    _tmpdir_owned: bool = field(default=True, init=False, repr=False)
    _creator_pid: int = field(default_factory=os.getpid, init=False, repr=False)

    # ---- names

    @classmethod
    def _for_slot(cls, slot: int, tmpdir: Path | None) -> Lab:
        lab = cls(
            slot=slot,
            staging_ns=f"mrd{slot}-stg",
            backend_ns=f"mrd{slot}-be",
            host_addr=f"198.18.{2 * slot}.1",
            staging_addr=f"198.18.{2 * slot}.2",
            staging_backend_addr=f"198.18.{2 * slot + 1}.1",
            backend_addr=f"198.18.{2 * slot + 1}.2",
            tmpdir=tmpdir or Path("/nonexistent"),
            ca_pem=(tmpdir or Path("/nonexistent")) / "ca.pem",
            staging_env=dict(STAGING_ENV_TEMPLATE),
        )
        # Only ever rm -rf a directory that is recognisably ours.
        lab._tmpdir_owned = tmpdir is not None and tmpdir.name.startswith(TMP_PREFIX)
        return lab

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

    def _ns(self, ns: str) -> str:
        return {"staging": self.staging_ns, "backend": self.backend_ns}.get(ns, ns)

    def log_path(self, service: str) -> Path:
        return self.tmpdir / f"{service}.log"

    # ---- running things inside the namespaces

    def run_in(
        self, ns: str, argv: Sequence[str], **popen_kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``ns`` (`ip netns exec`, so /etc/netns files apply).

        Output is captured as text and the call times out after 60 s unless overridden.
        """
        if "stdout" not in popen_kwargs and "stderr" not in popen_kwargs:
            popen_kwargs.setdefault("capture_output", True)
        popen_kwargs.setdefault("text", True)
        popen_kwargs.setdefault("timeout", 60)
        popen_kwargs.setdefault("check", False)
        return subprocess.run(["ip", "netns", "exec", self._ns(ns), *argv], **popen_kwargs)

    def run_in_service(
        self, argv: Sequence[str], **popen_kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the staging service's mount and network namespaces (its files).

        Same defaults as ``run_in``.
        """
        if "stdout" not in popen_kwargs and "stderr" not in popen_kwargs:
            popen_kwargs.setdefault("capture_output", True)
        popen_kwargs.setdefault("text", True)
        popen_kwargs.setdefault("timeout", 60)
        popen_kwargs.setdefault("check", False)
        nsenter = shutil.which("nsenter") or "nsenter"
        return subprocess.run(
            [nsenter, "-t", str(self.service_pid), "-m", "-n", *argv], **popen_kwargs
        )

    def popen_in(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``ns``; the lab kills it on close() if still running.

        `ip netns exec` execs the command, so the returned pid is the command's own.
        """
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self._ns(ns), *argv], **kw
        )
        self._procs.append(proc)
        return proc

    def call_in(self, ns: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn`` in this process, in a thread switched into ``ns`` (see ``in_netns``)."""
        return call_in_netns(self._ns(ns), fn, *args, **kwargs)

    # ---- building

    def _build_host_side(self) -> None:
        _ip_batch(
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
        _ip_batch(
            [
                "link set dev lo up",
                f"addr add {self.staging_addr}/30 dev {self.staging_veth}",
                f"link set dev {self.staging_veth} up",
                f"addr add {self.staging_backend_addr}/30 dev {self.staging_backend_veth}",
                f"link set dev {self.staging_backend_veth} up",
            ],
            ns=self.staging_ns,
        )
        _ip_batch(
            [
                "link set dev lo up",
                f"addr add {self.backend_addr}/30 dev {self.backend_veth}",
                f"link set dev {self.backend_veth} up",
            ],
            ns=self.backend_ns,
        )

    def _write_etc(self) -> None:
        # `ip netns exec` bind-mounts /etc/netns/<ns>/* over /etc/*, so these are what
        # processes in staging see as /etc/resolv.conf etc.
        etc = ETC_NETNS / self.staging_ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        (etc / "hosts").write_text(
            f"127.0.0.1 localhost\n::1 localhost\n{self.backend_addr} {HOSTS_ONLY_NAME}\n"
        )
        (etc / "nsswitch.conf").write_text(_NSSWITCH)

    def _services(self, certs_key: Path, certs_chain: Path) -> list[_Service]:
        def server(kind: str, host: str, port: int, **opts: str) -> list[str]:
            argv = [sys.executable, "-u", "-m", "mirrord.lab.servers", kind]
            argv += ["--host", host, "--port", str(port)]
            for name, value in opts.items():
                argv += [f"--{name}", value]
            return argv

        # Other services get PYTHONPATH; the staging service gets exactly staging_env
        # (it imports via cwd = PACKAGE_ROOT instead) since the tool copies its environment.
        env = {"PATH": STAGING_ENV_TEMPLATE["PATH"], "PYTHONPATH": str(PACKAGE_ROOT)}
        stg, be, ba = self.staging_ns, self.backend_ns, self.backend_addr
        lo = "127.0.0.1"
        dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        return [
            _Service(
                "staging-service",
                stg,
                server(
                    "text-http",
                    self.staging_addr,
                    self.service_port,
                    body="staging-service",
                    # a tmpfs with the target's files, in this service's mount namespace only
                    **{"remote-files": remote_files.MOUNT_POINT},
                ),
                self.staging_env,
                lambda: _probe_tcp(self.staging_addr, self.service_port),
            ),
            _Service(
                "backend-http",
                be,
                server("json-http", ba, self.service_port, service="backend"),
                env,
                lambda: _probe_tcp(ba, self.service_port),
            ),
            _Service(
                "backend-udp",
                be,
                server("udp-echo", ba, self.udp_port, prefix="echo:"),
                env,
                lambda: _probe_udp(ba, self.udp_port),
            ),
            _Service(
                "backend-tls",
                be,
                server(
                    "tls-http",
                    ba,
                    self.tls_port,
                    service="backend-tls",
                    cert=str(certs_chain),
                    key=str(certs_key),
                ),
                env,
                lambda: _probe_tcp(ba, self.tls_port),
            ),
            _Service(
                "staging-loopback",
                stg,
                server("text-http", lo, self.loopback_port, body="staging-loopback"),
                env,
                lambda: _probe_tcp(lo, self.loopback_port),
            ),
            _Service(
                "staging-loopback-udp",
                stg,
                server("udp-echo", lo, self.udp_port, prefix="loopback-echo:"),
                env,
                lambda: _probe_udp(lo, self.udp_port),
            ),
            _Service(
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
                    f"--pid-file={self.tmpdir / 'dnsmasq.pid'}",
                    "--log-facility=-",  # stderr, i.e. the log file
                    "--log-queries",
                ],
                {"PATH": STAGING_ENV_TEMPLATE["PATH"]},
                lambda: _probe_dns(DNS_NAMES[0], ba),
            ),
        ]

    def _start(self, svc: _Service) -> None:
        with open(self.log_path(svc.name), "wb") as log:
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
        self._procs.append(svc.proc)
        self.pids[svc.name] = svc.proc.pid

    def _start_services(self) -> None:
        # Certificates first (the only slow step, ~0.2 s once per process) so the
        # TLS backend can start alongside the others.
        certs = write_certs(self.tmpdir)
        self.ca_pem = certs.ca_pem
        services = self._services(certs.key_pem, certs.cert_pem)
        staging_service, others = services[0], services[1:]
        # The staging service must be the oldest process in staging: tools pick the
        # oldest process of a namespace as the target. Start times have clock-tick
        # (10 ms) resolution, so leave a gap before starting anything else there.
        self._start(staging_service)
        assert staging_service.proc is not None
        self.service_pid = staging_service.proc.pid
        started = time.monotonic()
        for svc in others:
            if svc.ns == self.staging_ns:
                time.sleep(max(0.0, started + 0.03 - time.monotonic()))
            self._start(svc)
        self._wait_ready(services)

    def _wait_ready(self, services: list[_Service]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        pending = list(services)
        while True:
            for svc in services:
                assert svc.proc is not None
                if svc.proc.poll() is not None:
                    raise LabError(
                        f"lab service {svc.name} exited with code {svc.proc.returncode}: "
                        f"{self._last_log_line(svc.name)}"
                    )
            for ns in self.namespaces:
                here = [svc for svc in pending if svc.ns == ns]
                if here:
                    ready = self.call_in(ns, lambda here=here: [s for s in here if s.probe()])
                    pending = [svc for svc in pending if svc not in ready]
            if not pending:
                return
            if time.monotonic() > deadline:
                names = ", ".join(svc.name for svc in pending)
                raise LabError(f"lab services not ready after {READY_TIMEOUT:.0f} s: {names}")
            time.sleep(0.01)

    def _last_log_line(self, name: str) -> str:
        try:
            lines = self.log_path(name).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"

    # ---- teardown

    def close(self) -> None:
        """Tear everything down. Idempotent; copes with a half-built lab."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self._close_at_exit)
        self._kill_everything()
        commands = []
        if _link_exists(self.host_veth):
            # Deleting one end removes the pair now; namespace deletion would do it
            # asynchronously, and a new lab could then trip over the old name.
            commands.append(f"link del dev {self.host_veth}")
        existing = _netns_names()
        commands += [f"netns del {ns}" for ns in self.namespaces if ns in existing]
        if commands:
            _ip_batch(commands, force=True)
        for etc in self.etc_dirs:
            shutil.rmtree(etc, ignore_errors=True)
        if self._tmpdir_owned and not os.environ.get("MIRRORD_LAB_KEEP_TMP"):
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        if self._owns_state:
            with contextlib.suppress(OSError):
                _state_path(self.slot).unlink()

    def _kill_everything(self) -> None:
        # Our own children first (so they get reaped), then anything else left in the
        # namespaces (e.g. processes a test started with plain subprocess): a
        # namespace is only really gone once no process holds it.
        procs = [p for p in self._procs if p.poll() is None]
        own = {p.pid for p in self._procs}
        strays = {pid for ns in self.namespaces for pid in netns_pids(ns)} - own - {os.getpid()}
        for p in procs:
            with contextlib.suppress(OSError):
                p.send_signal(signal.SIGTERM)
        for pid in strays:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE
        while time.monotonic() < deadline:
            procs = [p for p in procs if p.poll() is None]
            strays = {pid for pid in strays if process_start(pid) is not None}
            if not procs and not strays:
                return
            time.sleep(0.01)
        for p in procs:
            with contextlib.suppress(OSError):
                p.kill()
        for pid in strays:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=KILL_GRACE)

    def _close_at_exit(self) -> None:
        # A forked child exiting must not tear down its parent's lab.
        if os.getpid() == self._creator_pid:
            self.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create_lab() -> Lab:
    """Build a lab in the first free slot and wait until all its services answer.

    Raises LabError (after cleaning up whatever was built) on failure. The lab is
    closed at interpreter exit if the caller doesn't; on SIGTERM only if the caller
    turns the signal into an exit (e.g. ``signal.signal(SIGTERM, lambda *_: sys.exit(1))``).
    """
    if os.geteuid() != 0:
        raise LabError("the lab needs root (it creates network namespaces); not running as root")
    for tool in ("ip", "dnsmasq"):
        if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()):
            raise LabError(f"the lab needs `{tool}` installed")
    tmpdir = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
    lab: Lab | None = None
    try:
        with _global_lock():
            # Free slots held by labs whose creator died without closing them.
            _cleanup_stale_locked(include_unowned=False)
            netns = _netns_names()
            slot = next((s for s in range(MAX_SLOT + 1) if not _slot_in_use(s, netns)), None)
            if slot is None:
                raise LabError(f"no free lab slot (all {MAX_SLOT + 1} in use)")
            lab = Lab._for_slot(slot, tmpdir)
            # Owner record before anything exists, so a half-built lab is never "unowned".
            owner = {"pid": os.getpid(), "start": process_start(os.getpid())}
            _state_path(slot).write_text(json.dumps({**owner, "tmpdir": str(tmpdir)}))
            lab._owns_state = True
            atexit.register(lab._close_at_exit)
            lab._build_host_side()
        lab._write_etc()
        lab._start_services()
        return lab
    except BaseException as exc:
        if lab is not None:
            lab.close()
        else:
            shutil.rmtree(tmpdir, ignore_errors=True)
        if isinstance(exc, LabError):
            raise
        if isinstance(exc, Exception):
            raise LabError(f"could not create the lab: {type(exc).__name__}: {exc}") from exc
        raise
