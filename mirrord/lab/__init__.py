"""Test lab: a fake staging cluster made of Linux network namespaces (needs root)."""

from mirrord.lab.dns import dns_query_a
from mirrord.lab.lab import Lab, cleanup_stale_labs, create_lab
from mirrord.lab.namespaces import LabError, call_in_netns, in_netns, netns_pids
from mirrord.lab.services import STAGING_ENV_TEMPLATE
from mirrord.lab.topology import DNS_NAMES, HOSTS_ONLY_NAME, LAB_NET

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
