"""The in-app outgoing filter: mirrord's entry grammar and local/remote decisions."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mirrord.settings.outgoing_filter import FilterError, OutgoingFilter, parse_entry

# ------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("text", "protocol", "kind", "port", "detail"),
    [
        # The cases of mirrord's own filter.rs tests.
        ("tcp://1.2.3.0/24:7777", "tcp", "subnet", 7777, "1.2.3.0/24"),
        ("tcp://[2800:3f0:4001:81e::2004]:7777", "tcp", "ip", 7777, "2800:3f0:4001:81e::2004"),
        ("tcp://", "tcp", "port", 0, None),
        ("tcp://google.com:7777", "tcp", "name", 7777, "google.com"),
        ("rust-lang.org", "any", "name", 0, "rust-lang.org"),
        ("localhost", "any", "name", 0, "localhost"),
        ("1.2.3.0/24:7777", "any", "subnet", 7777, "1.2.3.0/24"),
        ("1.2.3.0/24", "any", "subnet", 0, "1.2.3.0/24"),
        ("udp://:7777", "udp", "port", 7777, None),
        (":7777", "any", "port", 7777, None),
        # And the ones from the brief / docs.
        (":53", "any", "port", 53, None),
        ("udp://:53", "udp", "port", 53, None),
        ("1.1.1.0/24:1337", "any", "subnet", 1337, "1.1.1.0/24"),
        ("google.com:7777", "any", "name", 7777, "google.com"),
        ("[2001::1]:80", "any", "ip", 80, "2001::1"),
        ("[2001:db8::]/32:443", "any", "subnet", 443, "2001:db8::/32"),
        ("10.0.0.7", "any", "ip", 0, "10.0.0.7"),
        ("TCP://10.0.0.7:5432", "tcp", "ip", 5432, "10.0.0.7"),
        ("any://:80", "any", "port", 80, None),
        ("0.0.0.0:53", "any", "port", 53, None),  # unspecified address = any address
        ("[::]:8080", "any", "port", 8080, None),
        ("1.2.3.77/24", "any", "subnet", 0, "1.2.3.0/24"),  # host bits are fine
        ("My-Host_1.Example.COM", "any", "name", 0, "my-host_1.example.com"),
        ("svc.ns.svc.cluster.local.:80", "any", "name", 80, "svc.ns.svc.cluster.local"),
        ("1.2.3", "any", "name", 0, "1.2.3"),  # not an IPv4 address, so mirrord takes a name
    ],
)
def test_parse_valid(text: str, protocol: str, kind: str, port: int, detail: str | None) -> None:
    entry = parse_entry(text)
    assert (entry.protocol, entry.kind, entry.port) == (protocol, kind, port)
    got = {"subnet": entry.network, "ip": entry.ip, "name": entry.name, "port": None}[kind]
    assert (None if got is None else str(got)) == detail


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("tcp://google.com/24:7777", "subnet needs an IP address"),  # mirrord's bad cases
        (":7777udp://", "unknown protocol"),
        ("meow://", "unknown protocol"),
        ("http://example.com", "unknown protocol"),
        ("", "empty"),
        ("1.2.3.4:70000", "out of range"),
        ("1.2.3.0/33", "too long"),
        ("[2001::]/129", "too long"),
        ("/24", "subnet needs an IP address"),
        ("[::1", "expected"),
        ("::1", "expected"),
        ("2001:db8::1", "expected"),
        ("[zz::1]:80", "not an IPv6 address"),
        ("[1.2.3.4]:80", "expected"),
        ("host name", "expected"),
        ("1.2.3.4:", "expected"),
        ("a:b", "expected"),
        ("tcp:// 1.2.3.4", "expected"),
        ("bücher.de", "expected"),
        ("1.2.3.4:80:81", "expected"),
    ],
)
def test_parse_invalid_names_the_entry(text: str, reason: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_entry(text)
    message = str(info.value)
    assert f'"{text}"' in message
    assert reason in message
    assert "\n" not in message


def test_filter_error_is_a_value_error() -> None:
    assert issubclass(FilterError, ValueError)
    with pytest.raises(ValueError, match="nope"):
        OutgoingFilter("remote", ["nope://x"])


def test_dns_entries_take_no_protocol() -> None:
    assert parse_entry("db.internal:5432", allow_protocol=False).kind == "name"
    with pytest.raises(FilterError, match="protocol is not allowed"):
        parse_entry("tcp://db.internal", allow_protocol=False)


def test_empty_filters_and_bad_modes() -> None:
    # Empty lists only reach the layer for DNS (the config refuses empty outgoing filters).
    assert OutgoingFilter("local", []).is_remote("tcp", "1.2.3.4", 80)
    assert not OutgoingFilter("remote", []).is_remote("tcp", "1.2.3.4", 80)
    assert not OutgoingFilter("remote", []).query_is_remote("db")
    with pytest.raises(FilterError, match="mode"):
        OutgoingFilter("sideways", [":80"])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- matching


def test_no_filter_sends_everything_remote() -> None:
    for f in (OutgoingFilter(), OutgoingFilter.from_settings(None)):
        assert f.is_remote("tcp", "127.0.0.1", 80)
        assert f.is_remote("udp", "::1", 53)
        assert not f.name_is_local("localhost")


def test_remote_mode() -> None:
    f = OutgoingFilter.from_settings(
        {"mode": "remote", "entries": ["udp://:53", "10.0.0.0/8", "tcp://db.svc:5432"]}
    )
    assert f.is_remote("udp", "8.8.8.8", 53)
    assert not f.is_remote("tcp", "8.8.8.8", 53)  # the :53 entry is UDP only
    assert f.is_remote("tcp", "10.1.2.3", 443)
    assert not f.is_remote("tcp", "11.1.2.3", 443)
    assert f.is_remote("tcp", "192.0.2.1", 5432, ["DB.SVC"])  # names are case-insensitive
    assert f.is_remote("tcp", "192.0.2.1", 5432, ["other", "db.svc."])
    assert not f.is_remote("tcp", "192.0.2.1", 5433, ["db.svc"])  # wrong port
    assert not f.is_remote("udp", "192.0.2.1", 5432, ["db.svc"])  # wrong protocol
    assert not f.name_is_local("db.svc")  # only local filters keep names local


def test_local_mode() -> None:
    f = OutgoingFilter("local", ["tcp://localhost:1337", ":7331", "google.com", "1.1.5.0/24"])
    assert not f.is_remote("tcp", "127.0.0.1", 1337, ["localhost"])
    assert f.is_remote("udp", "127.0.0.1", 1337, ["localhost"])
    assert f.is_remote("tcp", "127.0.0.1", 1337)  # no name, not matched
    assert not f.is_remote("udp", "203.0.113.9", 7331)
    assert not f.is_remote("tcp", "142.250.1.1", 443, ["google.com"])
    assert not f.is_remote("tcp", "1.1.5.200", 1)
    assert f.is_remote("tcp", "1.1.6.1", 1)
    assert f.name_is_local("Google.COM.")
    assert f.name_is_local("localhost")
    assert not f.name_is_local("example.com")


def test_ip_entries_and_address_forms() -> None:
    f = OutgoingFilter("remote", ["10.0.0.7:80", "[2001:db8::1]", "0.0.0.0:9999"])
    assert f.is_remote("tcp", "10.0.0.7", 80)
    assert not f.is_remote("tcp", "10.0.0.7", 81)
    assert f.is_remote("tcp", "::ffff:10.0.0.7", 80)  # IPv4-mapped from an AF_INET6 socket
    assert f.is_remote("udp", "2001:db8::1", 12345)
    assert f.is_remote("tcp", "2001:db8::1%eth0", 1)  # scope id ignored
    assert f.is_remote("tcp", "198.51.100.1", 9999)  # unspecified address: any host
    assert f.is_remote("tcp", "2001:db8::99", 9999)
    assert not f.is_remote("tcp", "not-an-ip", 80)
    with pytest.raises(ValueError, match="protocol"):
        f.is_remote("sctp", "10.0.0.7", 80)


def test_protocol_only_entry_matches_all_of_that_protocol() -> None:
    f = OutgoingFilter("local", ["udp://"])
    assert not f.is_remote("udp", "1.2.3.4", 5)
    assert f.is_remote("tcp", "1.2.3.4", 5)


def test_dns_queries() -> None:
    # mirrord's DnsSelector: entry port 0 = any service port; IP entries match IP literals.
    f = OutgoingFilter.from_settings(
        {"mode": "remote", "entries": ["db.svc", "api.svc:8080", "10.0.0.0/8", ":5432"]}
    )
    assert f.query_is_remote("db.svc")
    assert f.query_is_remote("DB.svc", 443)
    assert f.query_is_remote("api.svc", 8080)
    assert not f.query_is_remote("api.svc", 0)
    assert f.query_is_remote("10.1.1.1")
    assert f.query_is_remote("anything", 5432)
    assert not f.query_is_remote("example.com", 443)
    local = OutgoingFilter("local", ["localhost"], allow_protocol=False)
    assert not local.query_is_remote("localhost")
    assert local.query_is_remote("db.svc")
    assert OutgoingFilter().query_is_remote("x")


def test_module_imports_only_the_standard_library() -> None:
    code = (
        "import sys; import mirrord.settings.outgoing_filter; "
        "bad = [m for m in ('pydantic', 'yaml', 'mirrord.config') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------------------- properties

ipv4_networks = st.builds(
    lambda addr, prefix: ipaddress.IPv4Network((addr, prefix), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
ipv6_networks = st.builds(
    lambda addr, prefix: ipaddress.IPv6Network((addr, prefix), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)


def _entry_for(network: ipaddress.IPv4Network | ipaddress.IPv6Network, port: int) -> str:
    base = network.network_address
    host = f"[{base}]" if network.version == 6 else str(base)
    return f"{host}/{network.prefixlen}" + (f":{port}" if port else "")


@given(
    network=st.one_of(ipv4_networks, ipv6_networks),
    offset=st.integers(min_value=0),
    port=st.integers(0, 65535),
    proto=st.sampled_from(["tcp", "udp"]),
)
def test_address_inside_subnet_always_matches(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network, offset: int, port: int, proto: str
) -> None:
    address = network.network_address + (offset % network.num_addresses)
    entry = _entry_for(network, 0)
    assert OutgoingFilter("remote", [entry]).is_remote(proto, str(address), port)
    assert not OutgoingFilter("local", [entry]).is_remote(proto, str(address), port)


@given(
    network=st.one_of(ipv4_networks, ipv6_networks),
    raw=st.integers(min_value=0),
    port=st.integers(1, 65535),
)
def test_address_outside_subnet_never_matches(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network, raw: int, port: int
) -> None:
    address = type(network.network_address)(raw % (2**network.max_prefixlen))
    assume(address not in network)
    entry = _entry_for(network, 0)
    assert not OutgoingFilter("remote", [entry]).is_remote("tcp", str(address), port)
    assert OutgoingFilter("local", [entry]).is_remote("tcp", str(address), port)


@given(network=ipv4_networks, port=st.integers(1, 65535), other=st.integers(1, 65535))
def test_subnet_port_must_match(network: ipaddress.IPv4Network, port: int, other: int) -> None:
    f = OutgoingFilter("remote", [_entry_for(network, port)])
    address = str(network.network_address)
    assert f.is_remote("udp", address, port)
    assert f.is_remote("udp", address, other) == (other == port)


@given(
    name=st.from_regex(r"[a-z0-9][a-z0-9-]{0,10}(\.[a-z0-9-]{1,10}){0,3}", fullmatch=True),
    port=st.integers(0, 65535),
)
def test_names_round_trip_and_match_in_any_case(name: str, port: int) -> None:
    assume(not _looks_like_ip(name))
    text = name if port == 0 else f"{name}:{port}"
    entry = parse_entry(text)
    assert (entry.kind, entry.name, entry.port) == ("name", name, port)
    f = OutgoingFilter("local", [text])
    assert not f.is_remote("tcp", "192.0.2.10", port or 1, [name.upper()])
    assert f.name_is_local(name.upper())


def _looks_like_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
