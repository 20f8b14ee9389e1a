"""iptables nat REDIRECT rules that steal ports, in chains of our own name.

Every agent owns one chain `MIRRORD_<pid>_<start time>` in the nat table, jumped to from PREROUTING
(traffic from outside the target) and OUTPUT (traffic from inside it, except the
agent's own connections, which carry `MARK`). Rules go when their port is released,
all of them when the agent exits, and chains of agents that died without cleaning up
(SIGKILL) are removed when the next agent starts in that namespace.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess

from mirrord.system.procfs import process_start

log = logging.getLogger("mirrord.agent")

PREFIX = "MIRRORD_"
#: fwmark on the agent's own connections to the original service: never redirected
MARK = 0x6D7264
_CHAIN = re.compile(rf"^-N ({PREFIX}(\d+)_(\d+))$")


def chain_name(pid: int) -> str:
    """Our chain: pid and start time, so a reused pid is not mistaken for its owner."""
    return f"{PREFIX}{pid}_{process_start(pid) or 0}"


class IptablesError(RuntimeError):
    pass


#: IPv4 and IPv6 tables: the same chains and rules in each
TOOLS = ("iptables", "ip6tables")


def _iptables(*args: str, check: bool = True, tool: str = "iptables") -> str:
    try:
        proc = subprocess.run(
            [tool, "-w", "5", "-t", "nat", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        raise IptablesError(f"{tool} is not installed where the target runs") from None
    if check and proc.returncode != 0:
        raise IptablesError(f"{tool} {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def _jumps(chain: str) -> list[tuple[str, ...]]:
    # OUTPUT: only connections to the target itself (its loopback, its own addresses);
    # its connections to other hosts on a stolen port number are its own business
    local = ("-m", "addrtype", "--dst-type", "LOCAL")
    return [
        ("PREROUTING", "-j", chain),
        ("OUTPUT", *local, "-m", "mark", "!", "--mark", str(MARK), "-j", chain),
    ]


def _remove_chain(chain: str, tool: str) -> None:
    # every jump to it, as iptables lists it: also those of an older agent's rule shape,
    # and a crashed predecessor may have inserted one more than once
    for hook in ("PREROUTING", "OUTPUT"):
        for line in _iptables("-S", hook, check=False, tool=tool).splitlines():
            words = shlex.split(line)
            if words[:2] == ["-A", hook] and words[-2:] == ["-j", chain]:
                _iptables("-D", hook, *words[2:], check=False, tool=tool)
    _iptables("-F", chain, check=False, tool=tool)
    _iptables("-X", chain, check=False, tool=tool)


def remove_stale_chains() -> list[str]:
    """Chains of agents that are gone (crashed, killed), in both tables; their names."""
    removed = []
    for tool in TOOLS:
        try:
            listing = _iptables("-S", check=False, tool=tool)
        except IptablesError:
            continue  # no ip6tables: nothing of ours there either
        for line in listing.splitlines():
            match = _CHAIN.match(line.strip())
            if match is None:
                continue
            pid, started = int(match.group(2)), int(match.group(3))
            if pid != os.getpid() and process_start(pid) != started:
                _remove_chain(match.group(1), tool)
                removed.append(f"{tool}:{match.group(1)}")
    if removed:
        log.info("removed iptables chains left by dead agents: %s", ", ".join(removed))
    return removed


class Redirects:
    """This agent's REDIRECT rules: target port -> the agent's stealing listener."""

    def __init__(self, to_port: int, tool: str = "iptables") -> None:
        self.to_port = to_port
        self.tool = tool
        self.chain = chain_name(os.getpid())
        self.ports: set[int] = set()
        self.released: set[int] = set()  # ports whose new connections go past us again
        self._created = False

    def _rule(self, port: int) -> tuple[str, ...]:
        # --syn: a connection's first packet only. Where conntrack starts with our nat rules
        # it picks up connections already open mid-stream: those must go on untouched.
        redirect = ("-j", "REDIRECT", "--to-ports", str(self.to_port))
        return ("-p", "tcp", "--dport", str(port), "--syn", *redirect)

    def add(self, port: int) -> None:
        if not self._created:
            _iptables("-N", self.chain, tool=self.tool)
            self._created = True
            for hook, *rule in _jumps(self.chain):
                _iptables("-I", hook, "1", *rule, tool=self.tool)
        if port in self.released:
            _iptables("-D", self.chain, *self._past_us(port), check=False, tool=self.tool)
            self.released.discard(port)
        if port not in self.ports:
            _iptables("-A", self.chain, *self._rule(port), tool=self.tool)
            self.ports.add(port)

    def _past_us(self, port: int) -> tuple[str, ...]:
        return ("-p", "tcp", "--dport", str(port), "--syn", "-j", "RETURN")

    def release(self, port: int) -> None:
        """New connections to `port` go to the original service again.

        The REDIRECT rule itself stays until the agent exits: connections it redirected
        already (relayed by us, or handed over to an app) need it, because deleting it
        makes the kernel stop translating their replies (seen with iptables-nft: an open
        connection then hangs). A RETURN before it sends new connections past it."""
        if port in self.ports and port not in self.released:
            _iptables("-I", self.chain, "1", *self._past_us(port), tool=self.tool)
            self.released.add(port)

    def close(self) -> None:
        """Remove every rule and the chain (idempotent)."""
        if self._created:
            _remove_chain(self.chain, self.tool)
            self._created = False
            self.ports.clear()
            self.released.clear()
