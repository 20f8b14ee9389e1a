"""kwok's configuration: its own fast stages, adjusted for the lab.

- Node stages name the node by ``.metadata.name``: kwok's ``NodeName`` is its
  ``--node-name``, empty under ``--manage-all-nodes``, so the Hostname address was never
  written and a second node-initialize (after a NotReady) wrote ``addresses:`` with nothing
  under it, i.e. null: port-forward then failed with "no preferred addresses found".
- Pod stages that write a status (pod-ready, pod-complete) skip pods on nodes whose name
  starts with ``PLAYED_NODE_PREFIX``: the harness plays the container runtime there and
  writes those pods' status itself (container ids, phase).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PLAYED_NODE_PREFIX = "played-"

NODE_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
)
POD_STAGES = ("pod/fast/pod-ready.yaml", "pod/fast/pod-complete.yaml", "pod/fast/pod-delete.yaml")
STATUS_WRITING_POD_STAGES = {"pod-ready", "pod-complete"}

# A jq query (kwok's selector keys are jq, run by gojq); `// ""` keeps unscheduled pods valid.
_ON_PLAYED_NODE = f'(.spec.nodeName // "") | startswith("{PLAYED_NODE_PREFIX}")'


def _load(stage_dir: Path, rel: str) -> dict[str, Any]:
    doc = yaml.safe_load((stage_dir / rel).read_text())
    if not isinstance(doc, dict) or doc.get("kind") != "Stage":
        raise ValueError(f"{stage_dir / rel} is not a kwok Stage")
    return doc


def _node_stage(doc: dict[str, Any]) -> dict[str, Any]:
    template = doc["spec"]["next"].get("statusTemplate")
    if template:
        doc["spec"]["next"]["statusTemplate"] = template.replace(
            "{{ with NodeName }}", "{{ with .metadata.name }}"
        )
    return doc


def _pod_stage(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["metadata"]["name"] in STATUS_WRITING_POD_STAGES:
        exprs = doc["spec"].setdefault("selector", {}).setdefault("matchExpressions", [])
        exprs.append({"key": _ON_PLAYED_NODE, "operator": "NotIn", "values": ["true"]})
    return doc


def lab_stages(stage_dir: Path) -> list[dict[str, Any]]:
    """The Stage documents kwok runs with, from the files in its module source."""
    nodes = [_node_stage(_load(stage_dir, rel)) for rel in NODE_STAGES]
    pods = [_pod_stage(_load(stage_dir, rel)) for rel in POD_STAGES]
    return nodes + pods


class _BlockDumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Templates stay readable block scalars in the written file.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def write_config(stage_dir: Path, path: Path) -> Path:
    """Write kwok's ``--config`` file (all stages, one YAML stream)."""
    path.write_text(yaml.dump_all(lab_stages(stage_dir), Dumper=_BlockDumper, sort_keys=False))
    return path
