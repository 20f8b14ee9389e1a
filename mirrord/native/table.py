"""The native relay's decision table, written from the settings contract the Python layer
reads (`mirrord.settings.contract.LayerSettings`), compiled by the same code the layer
compiles it with (the outgoing and DNS filters by `OutgoingFilter`), plus skip_processes
and the debugger ports.

The relay only looks entries up in it (mirrord/native/src/rules.c); every interpretation
of the user's config (filter grammar, unspecified addresses, IPv4-mapped IPv6, name
normalisation, DNS reflection of outgoing names) happened here, once, in Python. One text
line per entry: the relay parses it with no JSON or regex engine.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from mirrord.settings.contract import LayerSettings
from mirrord.settings.debugger import DebuggerPorts
from mirrord.settings.outgoing_filter import OutgoingFilter

MAGIC = "mirrord-relay-rules 1"
ENV = "MIRRORD_RELAY_RULES"


def _matches(proto: str, index: Any) -> list[str]:
    lines = [f"match {proto} any"] if index.any_port else []
    lines += [f"match {proto} port {port}" for port in sorted(index.ports)]
    for ip, ports in index.ips.items():
        lines += [f"match {proto} ip {ip} {port}" for port in sorted(ports)]
    for network, port in index.nets:
        lines.append(f"match {proto} net {network.network_address} {network.prefixlen} {port}")
    for name, ports in index.names.items():
        lines += [f"match {proto} name {name} {port}" for port in sorted(ports)]
    return lines


def _filter_mode(flt: OutgoingFilter | None) -> str:
    return (flt.mode if flt is not None else None) or "none"


def relay_table(
    settings: LayerSettings,
    skip_processes: Iterable[str] = (),
    debugger: DebuggerPorts | None = None,
) -> str:
    """The table for a session with these settings (`debugger`: the ports a debugger
    uses on this machine, MIRRORD_IGNORE_DEBUGGER_PORTS)."""
    outgoing, dns, incoming = settings.outgoing, settings.dns, settings.incoming
    # as the layer's Rules compile the contract
    out = OutgoingFilter.from_spec(outgoing.filter)
    dns_filter = None if dns.filter is None else OutgoingFilter.from_spec(dns.filter)
    lines = [
        MAGIC,
        f"outgoing {int(outgoing.tcp)} {int(outgoing.udp)} {int(outgoing.ignore_localhost)}",
        f"filter {_filter_mode(out)}",
        *_matches("tcp", out.index("tcp")),
        *_matches("udp", out.index("udp")),
        f"dns {int(dns.enabled)} {_filter_mode(dns_filter)}",
    ]
    if dns_filter is not None:
        # a DNS filter is looked up as OutgoingFilter.query_is_remote does: its tcp entries
        lines += _matches("dns", dns_filter.index("tcp"))
    lines += [f"local_name {name}" for name in sorted(out.local_names)]
    lines.append(f"incoming {incoming.mode} {int(incoming.ignore_localhost)}")
    if incoming.http_filter:
        # the JSON the layer's Subscribe carries (IncomingRules.http_filter)
        lines.append(f"http_filter {json.dumps(incoming.http_filter)}")
    lines += [f"port_mapping {a} {b}" for a, b in incoming.port_mapping]
    lines += [f"listen_port {a} {b}" for a, b in incoming.listen_ports]
    lines += [f"ignore_port {port}" for port in sorted(set(incoming.ignore_ports))]
    if incoming.ports is not None:
        lines += ["ports_only", *(f"port {port}" for port in sorted(set(incoming.ports)))]
    lines += [f"debugger_ports {a} {b}" for a, b in (debugger.ranges if debugger else ())]
    # a name with blanks cannot be a table word; no executable of a session has one
    lines += [f"skip {name}" for name in skip_processes if name and name.split() == [name]]
    return "\n".join(lines) + "\n"
