"""Test lab: a fake staging cluster made of Linux network namespaces (needs root)."""

from mirrord.lab.netlab import (
    DNS_NAMES,
    HOSTS_ONLY_NAME,
    LAB_NET,
    STAGING_ENV_TEMPLATE,
    Lab,
    LabError,
    call_in_netns,
    cleanup_stale_labs,
    create_lab,
    dns_query_a,
    in_netns,
    netns_pids,
)

__all__ = [
    "DNS_NAMES",
    "HOSTS_ONLY_NAME",
    "LAB_NET",
    "STAGING_ENV_TEMPLATE",
    "Lab",
    "LabError",
    "call_in_netns",
    "cleanup_stale_labs",
    "create_lab",
    "dns_query_a",
    "in_netns",
    "netns_pids",
]
