"""What a target string names: a Kubernetes workload (``deployment/api/container/main``),
a local one (``pid/``, ``netns/``), or nothing (``targetless``). Parsing only, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mirrord.targets.local import TargetError

#: Kubernetes target kinds, as mirrord spells them in target paths.
KUBE_KINDS = (
    "pod",
    "deployment",
    "rollout",
    "statefulset",
    "replicaset",
    "job",
    "cronjob",
    "service",
)
LOCAL_KINDS = ("pid", "netns")
# a DNS-1123 subdomain (object names) or label (container names)
_NAME = r"[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?"


@dataclass(frozen=True)
class KubeTarget:
    """A workload in a cluster; ``kind`` is one of :data:`KUBE_KINDS`, or ``targetless``."""

    kind: str
    name: str = ""
    container: str | None = None

    @property
    def targetless(self) -> bool:
        return self.kind == "targetless"

    def __str__(self) -> str:
        if self.targetless:
            return "targetless"
        path = f"{self.kind}/{self.name}"
        return f"{path}/container/{self.container}" if self.container else path


def target_kind(text: str) -> str:
    """``targetless`` or the part before the first ``/``."""
    text = text.strip()
    return "targetless" if text in ("", "targetless") else text.split("/", 1)[0]


def is_kube_target(text: str) -> bool:
    return target_kind(text) in KUBE_KINDS


def parse_kube_target(text: str) -> KubeTarget:
    """``KIND/NAME[/container/CONTAINER]`` or ``targetless``; a one-line error otherwise."""
    text = text.strip()
    if text in ("", "targetless"):
        return KubeTarget("targetless")
    m = re.fullmatch(rf"([a-z]+)/({_NAME})(?:/container/({_NAME}))?", text)
    if m is None or m.group(1) not in KUBE_KINDS:
        kind = target_kind(text)
        if kind in KUBE_KINDS:
            raise TargetError(
                f"invalid target {text!r}: expected {kind}/NAME or {kind}/NAME/container/CONTAINER"
            )
        raise TargetError(
            f"unknown target {text!r}: expected one of "
            + ", ".join(f"{k}/NAME" for k in (*KUBE_KINDS, *LOCAL_KINDS))
            + " or targetless"
        )
    return KubeTarget(m.group(1), m.group(2), m.group(3))
