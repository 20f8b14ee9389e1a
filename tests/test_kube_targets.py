"""Kubernetes targets resolved through the official client against the lab's real
control plane: every kind, the container choice, and one-line errors."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from mirrord.kube.client import KubeAccess, connect
from mirrord.kube.errors import KubeError
from mirrord.kube.resolve import ResolvedTarget, resolve
from mirrord.lab.kube import KubeLab, resources, workloads
from mirrord.targets.local import TargetError
from mirrord.targets.path import KubeTarget, parse_kube_target

NODE = "played-1"
LABELS = {"app": "checkout"}


def run_pods(kube: KubeLab, ns: str, selector: str, count: int = 1) -> list[Any]:
    """Wait for the controllers' pods and play them running (as a kubelet would)."""
    core = client.CoreV1Api(kube.api_client())
    pods = resources.wait_for(
        f"pods {selector}",
        lambda: core.list_namespaced_pod(ns, label_selector=selector).items,
        lambda items: len(items) >= count,
    )
    for pod in pods:
        resources.play_pod_running(kube.api_client(), pod.metadata.name, ns)
    return [core.read_namespaced_pod(p.metadata.name, ns) for p in pods]


def resolved(kube: KubeLab, ns: str, target: str) -> ResolvedTarget:
    return resolve(kube.api_client(), parse_kube_target(target), ns)


def status_of(pod: Any, container: str) -> Any:
    return next(s for s in pod.status.container_statuses if s.name == container)


def assert_targets(found: ResolvedTarget, pod: Any, container: str = "main") -> None:
    assert (found.pod, found.namespace, found.node) == (
        pod.metadata.name,
        pod.metadata.namespace,
        NODE,
    )
    assert found.pod_uid == pod.metadata.uid
    assert found.container == container
    assert f"{found.runtime}://{found.container_id}" == status_of(pod, container).container_id


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pod/web-7d9f", KubeTarget("pod", "web-7d9f")),
        ("pod/web/container/api", KubeTarget("pod", "web", "api")),
        ("deployment/checkout", KubeTarget("deployment", "checkout")),
        ("statefulset/db-proxy/container/proxy", KubeTarget("statefulset", "db-proxy", "proxy")),
        ("cronjob/nightly", KubeTarget("cronjob", "nightly")),
        ("targetless", KubeTarget("targetless")),
    ],
)
def test_target_paths_parse(text: str, expected: KubeTarget) -> None:
    assert parse_kube_target(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("deployment/", "expected deployment/NAME"),
        ("pod/Web", "expected pod/NAME"),
        ("pod/a/b", "expected pod/NAME or pod/NAME/container/CONTAINER"),
        ("gizmo/x", "unknown target 'gizmo/x'"),
    ],
)
def test_bad_target_paths_get_one_line(text: str, message: str) -> None:
    with pytest.raises(TargetError, match=message) as err:
        parse_kube_target(text)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- every kind resolves


def test_pod_and_its_named_container(kube_cluster: KubeLab, kube_ns: str) -> None:
    containers = [resources.container("api"), resources.container("worker")]
    kube_cluster.create_pod(
        resources.pod_manifest("web", NODE, namespace=kube_ns, containers=containers)
    )
    resources.play_pod_running(kube_cluster.api_client(), "web", kube_ns)
    pod = client.CoreV1Api(kube_cluster.api_client()).read_namespaced_pod("web", kube_ns)
    assert_targets(resolved(kube_cluster, kube_ns, "pod/web"), pod, "api")
    assert_targets(resolved(kube_cluster, kube_ns, "pod/web/container/worker"), pod, "worker")


def test_known_sidecars_are_skipped_and_the_default_container_wins(
    kube_cluster: KubeLab, kube_ns: str
) -> None:
    sidecars = [resources.container("istio-proxy"), resources.container("linkerd-proxy")]
    kube_cluster.create_pod(
        resources.pod_manifest(
            "meshed", NODE, namespace=kube_ns, containers=[*sidecars, resources.container("app")]
        )
    )
    manifest = resources.pod_manifest(
        "annotated",
        NODE,
        namespace=kube_ns,
        containers=[resources.container("app"), resources.container("other")],
    )
    manifest["metadata"]["annotations"] = {"kubectl.kubernetes.io/default-container": "other"}
    kube_cluster.create_pod(manifest)
    for name in ("meshed", "annotated"):
        resources.play_pod_running(kube_cluster.api_client(), name, kube_ns)
    assert resolved(kube_cluster, kube_ns, "pod/meshed").container == "app"
    assert resolved(kube_cluster, kube_ns, "pod/annotated").container == "other"
    # named explicitly, a sidecar is what the user gets
    assert resolved(kube_cluster, kube_ns, "pod/meshed/container/istio-proxy").container == (
        "istio-proxy"
    )


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet", "ReplicaSet"])
def test_apps_workloads_resolve_to_their_pod(
    kube_cluster: KubeLab, kube_ns: str, kind: str
) -> None:
    api = kube_cluster.api_client()
    workloads.apply(api, kube_ns, workloads.deployment("checkout", NODE, LABELS, kind=kind))
    (pod,) = run_pods(kube_cluster, kube_ns, "app=checkout")
    assert_targets(resolved(kube_cluster, kube_ns, f"{kind.lower()}/checkout"), pod)


def test_job_resolves_to_its_pod(kube_cluster: KubeLab, kube_ns: str) -> None:
    workloads.apply(kube_cluster.api_client(), kube_ns, workloads.job("migrate", NODE, LABELS))
    (pod,) = run_pods(kube_cluster, kube_ns, "job-name=migrate")
    assert_targets(resolved(kube_cluster, kube_ns, "job/migrate"), pod)


def test_cronjob_resolves_to_its_active_jobs_pod_or_says_none_runs(
    kube_cluster: KubeLab, kube_ns: str
) -> None:
    api = kube_cluster.api_client()
    cron = workloads.apply(api, kube_ns, workloads.cronjob("nightly", NODE, LABELS))
    with pytest.raises(KubeError, match=r"cronjob/nightly .*no running pod \(no active Job\)"):
        resolved(kube_cluster, kube_ns, "cronjob/nightly")
    run = workloads.apply(api, kube_ns, workloads.cronjob_run(cron, "nightly-1"))
    # what the CronJob controller records when it starts a run (it adopts no others)
    client.BatchV1Api(api).patch_namespaced_cron_job_status(
        "nightly", kube_ns, workloads.cronjob_active_status(run)
    )
    (pod,) = run_pods(kube_cluster, kube_ns, "job-name=nightly-1")
    assert_targets(resolved(kube_cluster, kube_ns, "cronjob/nightly"), pod)


def test_service_resolves_to_a_ready_pod_behind_its_selector(
    kube_cluster: KubeLab, kube_ns: str
) -> None:
    api = kube_cluster.api_client()
    workloads.apply(api, kube_ns, workloads.deployment("checkout", NODE, LABELS, replicas=2))
    workloads.apply(api, kube_ns, workloads.service("checkout-svc", LABELS))
    pods = run_pods(kube_cluster, kube_ns, "app=checkout", count=2)
    first, second = sorted(pods, key=lambda p: p.metadata.name)
    # the first pod is not ready: the service's target is the other one
    status = resources.to_dict(api, first.status)
    status["containerStatuses"][0]["ready"] = False
    kube_cluster.set_pod_status(first.metadata.name, kube_ns, status)
    assert_targets(resolved(kube_cluster, kube_ns, "service/checkout-svc"), second)


def test_rollouts_resolve_by_selector_and_by_workload_ref(
    kube_cluster: KubeLab, kube_ns: str
) -> None:
    api = kube_cluster.api_client()
    workloads.install_rollout_crd(api)
    workloads.apply(api, kube_ns, workloads.rollout("canary", NODE, {"app": "canary"}))
    # no Argo controller runs here: make its pod the way it would
    kube_cluster.create_pod(
        resources.pod_manifest("canary-abc", NODE, namespace=kube_ns, labels={"app": "canary"})
    )
    (canary,) = run_pods(kube_cluster, kube_ns, "app=canary")
    assert_targets(resolved(kube_cluster, kube_ns, "rollout/canary"), canary)

    workloads.apply(api, kube_ns, workloads.deployment("base", NODE, LABELS, replicas=0))
    workloads.apply(api, kube_ns, workloads.rollout("by-ref", NODE, {}, workload_ref="base"))
    kube_cluster.create_pod(
        resources.pod_manifest("by-ref-abc", NODE, namespace=kube_ns, labels=LABELS)
    )
    (by_ref,) = run_pods(kube_cluster, kube_ns, "app=checkout")
    assert_targets(resolved(kube_cluster, kube_ns, "rollout/by-ref"), by_ref)


def test_targetless_is_just_a_namespace(kube_cluster: KubeLab, kube_ns: str) -> None:
    found = resolved(kube_cluster, kube_ns, "targetless")
    assert found.targetless and found.namespace == kube_ns and not found.pod


# ---------------------------------------------------------------- one-line errors


def one_line(err: pytest.ExceptionInfo[KubeError]) -> str:
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_missing_targets_are_named(kube_cluster: KubeLab, kube_ns: str) -> None:
    for target in ("pod/nope", "deployment/nope", "rollout/nope", "cronjob/nope", "service/x"):
        if target.startswith("rollout/"):
            workloads.install_rollout_crd(kube_cluster.api_client())
        with pytest.raises(KubeError) as err:
            resolved(kube_cluster, kube_ns, target)
        assert one_line(err) == f"target {target} not found in namespace {kube_ns}"


def test_a_pod_that_does_not_run_is_refused(kube_cluster: KubeLab, kube_ns: str) -> None:
    kube_cluster.create_pod(resources.pod_manifest("pending", NODE, namespace=kube_ns))
    with pytest.raises(KubeError) as err:
        resolved(kube_cluster, kube_ns, "pod/pending")
    assert one_line(err) == (
        f"target pod/pending: pod {kube_ns}/pending is not running (phase Pending)"
    )
    resources.play_pod_running(kube_cluster.api_client(), "pending", kube_ns)
    with pytest.raises(KubeError) as err:
        resolved(kube_cluster, kube_ns, "pod/pending/container/sidecar")
    assert "has no container 'sidecar' (it has: main)" in one_line(err)


def test_a_workload_without_a_ready_pod_says_so(kube_cluster: KubeLab, kube_ns: str) -> None:
    api = kube_cluster.api_client()
    workloads.apply(api, kube_ns, workloads.deployment("idle", NODE, LABELS, replicas=0))
    with pytest.raises(KubeError) as err:
        resolved(kube_cluster, kube_ns, "deployment/idle")
    assert one_line(err).endswith("has no pod")
    workloads.apply(api, kube_ns, workloads.deployment("stuck", NODE, {"app": "stuck"}))
    core = client.CoreV1Api(api)
    resources.wait_for(
        "the stuck pod",
        lambda: core.list_namespaced_pod(kube_ns, label_selector="app=stuck").items,
        bool,
    )
    with pytest.raises(KubeError) as err:
        resolved(kube_cluster, kube_ns, "deployment/stuck")
    assert "no ready pod (" in one_line(err) and "is not running (phase Pending)" in str(err.value)


def test_forbidden_names_the_verb_and_resource(kube_cluster: KubeLab, kube_ns: str) -> None:
    api = kube_cluster.api_client()
    workloads.apply(api, kube_ns, workloads.deployment("checkout", NODE, LABELS))
    resources.create_service_account(api, "viewer", kube_ns)
    resources.grant(
        api, "viewer", kube_ns, [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
    )
    token = kube_cluster.service_account_token("viewer", kube_ns)
    viewer = kube_cluster.api_client(token=token)
    with pytest.raises(KubeError) as err:
        resolve(viewer, parse_kube_target("deployment/checkout"), kube_ns)
    line = one_line(err)
    assert line.startswith("cannot get deployment/checkout: forbidden by RBAC: ")
    assert 'cannot get resource "deployments" in API group "apps"' in line
    assert err.value.status == 403


# ---------------------------------------------------------------- the kubeconfig


def test_kubeconfig_context_and_namespace(kube_cluster: KubeLab, tmp_path: Any) -> None:
    path = tmp_path / "config"
    text = kube_cluster.kubeconfig.read_text()
    import yaml

    doc = yaml.safe_load(text)
    ctx = dict(doc["contexts"][0])
    doc["contexts"].append(
        {"name": "staging", "context": {**ctx["context"], "namespace": "staging"}}
    )
    path.write_text(yaml.safe_dump(doc))
    cluster = connect(KubeAccess(str(path), "staging"))
    assert (cluster.namespace, cluster.context) == ("staging", "staging")
    assert client.VersionApi(cluster.api).get_code().git_version.startswith("v1.")
    assert connect(KubeAccess(str(path))).namespace == "default"
    with pytest.raises(KubeError, match=r"no context 'prod' in the kubeconfig \(it has: "):
        connect(KubeAccess(str(path), "prod"))
    with pytest.raises(KubeError, match="no kubeconfig at /nonexistent"):
        connect(KubeAccess("/nonexistent"))
    (tmp_path / "broken").write_text("{not: [yaml")
    with pytest.raises(KubeError, match="cannot load the kubeconfig"):
        connect(KubeAccess(str(tmp_path / "broken")))
