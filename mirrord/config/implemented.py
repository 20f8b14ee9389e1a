"""Which keys this project acts on; the others mirrord knows are accepted and named once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mirrord.config.introspect import leaf_paths
from mirrord.config.positions import KeyPath

# Keys this project acts on; everything else mirrord knows is accepted but reported.
IMPLEMENTED: tuple[KeyPath, ...] = (
    ("target",),
    ("feature", "env", "include"),
    ("feature", "env", "exclude"),
    ("feature", "env", "override"),
    ("feature", "env", "unset"),
    ("feature", "env", "env_file"),
    ("feature", "env", "mapping"),
    ("feature", "network", "outgoing", "tcp"),
    ("feature", "network", "outgoing", "udp"),
    ("feature", "network", "outgoing", "ignore_localhost"),
    ("feature", "network", "outgoing", "filter"),
    ("feature", "network", "dns"),
    ("feature", "network", "incoming", "mode"),
    ("feature", "network", "incoming", "http_filter", "header_filter"),
    ("feature", "network", "incoming", "http_filter", "path_filter"),
    ("feature", "network", "incoming", "http_filter", "method_filter"),
    ("feature", "network", "incoming", "http_filter", "all_of"),
    ("feature", "network", "incoming", "http_filter", "any_of"),
    ("feature", "network", "incoming", "http_filter", "ports"),
    ("feature", "network", "incoming", "port_mapping"),
    ("feature", "network", "incoming", "listen_ports"),
    ("feature", "network", "incoming", "ignore_ports"),
    ("feature", "network", "incoming", "ports"),
    ("feature", "network", "incoming", "ignore_localhost"),
    ("feature", "fs"),  # every key: mode, the regex lists, mapping, readonly_file_buffer
    ("agent", "ttl"),
    # Kubernetes targets: the agent pod (mirrord/kube/agent_spec.py) and the cluster
    *(
        ("agent", key)
        for key in (
            "namespace",
            "image",
            "image_pull_policy",
            "image_pull_secrets",
            "ephemeral",
            "communication_timeout",
            "startup_timeout",
            "disabled_capabilities",
            "tolerations",
            "resources",
            "privileged",
            "labels",
            "annotations",
            "node_selector",
            "service_account",
            "priority_class",
            "security_context",
            "disable_mesh_sidecar_injection",
            "log_level",
        )
    ),
    ("kubeconfig",),
    ("kube_context",),
    ("skip_processes",),  # the native relay and the Python layer stay out of those
    ("skip_build_tools",),
    ("skip_extra_build_tools",),
)
# `true`/`false` on these sections only switches implemented things on or off.
IMPLEMENTED_TOGGLES: tuple[KeyPath, ...] = (
    ("feature", "network", "incoming"),
    ("feature", "env"),
    ("feature", "network"),
    ("feature", "network", "outgoing"),
)


def unimplemented_keys(trees: Iterable[Mapping[str, Any]]) -> list[str]:
    """Dotted paths the trees set that this project does not act on yet, sorted."""
    found: set[str] = set()
    for tree in trees:
        for key_path, value in leaf_paths(tree):
            if not _is_implemented(key_path, value):
                found.add(".".join(map(str, key_path)))
    return sorted(found)


def _is_implemented(key_path: KeyPath, value: Any) -> bool:
    if any(key_path[: len(p)] == p for p in IMPLEMENTED):
        return True
    # a bool switches a section; a string is the "mode" shorthand of a mode section
    return key_path in IMPLEMENTED_TOGGLES and isinstance(value, bool | str)
