"""The agent's Job and ephemeral container for every combination of agent.* options, as
the lab's API server validates them (a server-side dry run: admission and validation
run, nothing is stored), and what a user can rely on in them."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from kubernetes import client

from mirrord.config import load_config
from mirrord.kube.agent_spec import (
    AGENT_CONTAINER,
    CAPABILITIES,
    DEFAULT_IMAGE,
    AgentPlan,
    AgentSettings,
    ephemeral_container,
    job_manifest,
    token_secret,
)
from mirrord.kube.objects import model
from mirrord.kube.resolve import ResolvedTarget
from mirrord.lab.kube import KubeLab, resources
from mirrord.targets.path import KubeTarget

NODE = "played-1"
TOKEN = "0123456789abcdef0123456789abcdef"

# each agent.* option with values a user may write (mirrord.json keys)
OPTIONS: dict[str, list[Any]] = {
    "image": ["registry.example/agent:1.2", {"registry": "registry.example/agent", "tag": "9"}],
    "image_pull_policy": ["Always", "Never"],
    "image_pull_secrets": [[{"name": "regcred"}, {"name": "other"}]],
    "ttl": [0, 30],
    "privileged": [True],
    "disabled_capabilities": [["SYS_ADMIN"], list(CAPABILITIES)],
    "tolerations": [
        [],
        [{"key": "dedicated", "operator": "Equal", "value": "x", "effect": "NoSchedule"}],
    ],
    "resources": [{"limits": {"memory": "512Mi"}, "requests": {"cpu": "10m"}}],
    "labels": [{"team": "checkout"}],
    "annotations": [{"example.com/owner": "me"}],
    "node_selector": [{"kubernetes.io/os": "linux"}],
    "service_account": ["mirrord-agent"],
    "priority_class": ["mirrord-agents"],
    "security_context": [
        {"seccomp_profile": {"type": "RuntimeDefault"}},
        {"app_armor_profile": {"type": "Unconfined"}},
    ],
    "disable_mesh_sidecar_injection": [False],
    "communication_timeout": [5],
    "startup_timeout": [10],
    "log_level": ["debug"],
}
ONE_AT_A_TIME = [
    pytest.param({key: value}, id=f"{key}={json.dumps(value)[:30]}")
    for key, values in OPTIONS.items()
    for value in values
]
ALL_AT_ONCE = pytest.param({k: v[-1] for k, v in OPTIONS.items()}, id="all-options")
# the switches that change the spec's shape, every combination of them
SWITCHES = [
    pytest.param(
        {
            "privileged": priv,
            "disable_mesh_sidecar_injection": mesh,
            "disabled_capabilities": caps,
            "tolerations": tol,
        },
        id=f"privileged={priv}-mesh_opt_out={mesh}-disabled={len(caps)}-tolerations={tol is not None}",
    )
    for priv, mesh, caps, tol in itertools.product(
        (False, True), (False, True), ([], ["NET_RAW", "SYS_PTRACE"]), (None, [])
    )
]
CASES = [pytest.param({}, id="defaults"), *ONE_AT_A_TIME, ALL_AT_ONCE, *SWITCHES]


def settings_from(options: dict[str, Any]) -> AgentSettings:
    """Through the config loader, as a mirrord.json would give them."""
    cfg = load_config(None, env={}, overrides={f"agent.{k}": v for k, v in options.items()})
    return AgentSettings.from_config(cfg.agent)


@pytest.fixture(scope="module")
def target_pod(kube_cluster: KubeLab, tmp_path_factory: pytest.TempPathFactory) -> ResolvedTarget:
    from mirrord.lab.kube import workloads

    ns = "agent-spec"
    api = kube_cluster.api_client()
    workloads.create_namespace(api, ns)
    client.SchedulingV1Api(api).create_priority_class(
        model(
            client.V1PriorityClass,
            {
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {"name": "mirrord-agents"},
                "value": 1000,
            },
        )
    )
    manifest = resources.pod_manifest(
        "app", NODE, namespace=ns, containers=[resources.container("api")]
    )
    kube_cluster.create_pod(manifest)
    ids = resources.play_pod_running(api, "app", ns)
    pod = client.CoreV1Api(api).read_namespaced_pod("app", ns)
    return ResolvedTarget(
        KubeTarget("pod", "app", "api"),
        ns,
        pod="app",
        pod_uid=pod.metadata.uid,
        node=NODE,
        container="api",
        container_id=ids["api"],
        runtime="containerd",
    )


def dry_run_job(kube: KubeLab, manifest: dict[str, Any]) -> dict[str, Any]:
    api = kube.api_client()
    created = client.BatchV1Api(api).create_namespaced_job(
        manifest["metadata"]["namespace"], model(client.V1Job, manifest), dry_run="All"
    )
    return api.sanitize_for_serialization(created)


def container_of(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("options", CASES)
def test_job_passes_a_server_side_dry_run(
    kube_cluster: KubeLab, target_pod: ResolvedTarget, options: dict[str, Any]
) -> None:
    settings = settings_from(options)
    plan = AgentPlan.new(target_pod.namespace)
    job = dry_run_job(kube_cluster, job_manifest(settings, target_pod, plan))
    spec = job["spec"]
    pod = spec["template"]["spec"]
    container = container_of(job)
    # pinned to the target's node, in the host's PID namespace, gone `ttl` after it ends
    assert (pod["nodeName"], pod["hostPID"]) == (NODE, True)
    assert spec["ttlSecondsAfterFinished"] == settings.ttl == options.get("ttl", 1)
    assert spec["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"
    assert container["args"][:2] == ["--target", f"container/{target_pod.container_id}"]
    assert "127.0.0.1" in container["args"][3]  # listens on loopback only
    security = container["securityContext"]
    assert security["privileged"] is bool(options.get("privileged"))
    disabled = set(options.get("disabled_capabilities", []))
    assert set(security["capabilities"].get("add", [])) == set(CAPABILITIES) - disabled
    assert job["metadata"]["labels"]["app"] == "mirrord"
    mesh_opt_out = options.get("disable_mesh_sidecar_injection", True)
    annotations = spec["template"]["metadata"]["annotations"]
    assert (annotations.get("sidecar.istio.io/inject") == "false") is mesh_opt_out
    if "image" in options:
        assert container["image"].startswith("registry.example/agent:")
    else:
        assert container["image"] == DEFAULT_IMAGE
    if options.get("tolerations") is not None:
        assert pod.get("tolerations", []) == options["tolerations"]
    else:
        assert pod["tolerations"] == [{"operator": "Exists"}]
    for key, field in (
        ("service_account", "serviceAccountName"),
        ("priority_class", "priorityClassName"),
        ("node_selector", "nodeSelector"),
    ):
        if key in options:
            assert pod[field] == options[key]
    # the token is named, never written
    assert TOKEN not in json.dumps(job)
    (env,) = container["env"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": plan.token_secret, "key": "token"}


@pytest.mark.parametrize("options", [pytest.param({}, id="defaults"), ALL_AT_ONCE, *SWITCHES[:4]])
def test_targetless_job_is_unprivileged_and_unpinned(
    kube_cluster: KubeLab, target_pod: ResolvedTarget, options: dict[str, Any]
) -> None:
    settings = settings_from(options)
    targetless = ResolvedTarget(KubeTarget("targetless"), target_pod.namespace)
    job = dry_run_job(
        kube_cluster, job_manifest(settings, targetless, AgentPlan.new(targetless.namespace))
    )
    pod = job["spec"]["template"]["spec"]
    assert "nodeName" not in pod and not pod.get("hostPID")
    assert "securityContext" not in container_of(job)
    assert container_of(job)["args"][:2] == ["--target", "targetless"]
    assert "mirrord/target" not in job["metadata"]["labels"]  # nobody joins it


@pytest.mark.parametrize("options", CASES)
def test_ephemeral_container_passes_a_server_side_dry_run(
    kube_cluster: KubeLab, target_pod: ResolvedTarget, options: dict[str, Any]
) -> None:
    settings = settings_from(options)
    plan = AgentPlan.new(target_pod.namespace)
    container = ephemeral_container(settings, target_pod, plan)
    api = kube_cluster.api_client()
    patched = client.CoreV1Api(api).patch_namespaced_pod_ephemeralcontainers(
        target_pod.pod,
        target_pod.namespace,
        {"spec": {"ephemeralContainers": [container]}},
        dry_run="All",
    )
    pod = api.sanitize_for_serialization(patched)
    (got,) = [c for c in pod["spec"]["ephemeralContainers"] if c["name"] == plan.name]
    assert got["targetContainerName"] == "api"
    assert got["name"].startswith(AGENT_CONTAINER)
    disabled = set(options.get("disabled_capabilities", []))
    assert (
        set(got["securityContext"]["capabilities"].get("add", [])) == set(CAPABILITIES) - disabled
    )
    assert TOKEN not in json.dumps(pod)


def test_token_secret_passes_a_dry_run_and_is_owned(
    kube_cluster: KubeLab, target_pod: ResolvedTarget
) -> None:
    plan = AgentPlan.new(target_pod.namespace)
    owner = {"apiVersion": "v1", "kind": "Pod", "name": "app", "uid": target_pod.pod_uid}
    api = kube_cluster.api_client()
    made = client.CoreV1Api(api).create_namespaced_secret(
        plan.namespace, model(client.V1Secret, token_secret(plan, TOKEN, owner)), dry_run="All"
    )
    assert made.metadata.owner_references[0].uid == target_pod.pod_uid
    assert made.metadata.name == plan.token_secret
