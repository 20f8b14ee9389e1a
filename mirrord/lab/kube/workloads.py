"""Workloads for the lab cluster, as manifests: what users target (deployments,
statefulsets, replicasets, jobs, cronjobs, services, Argo rollouts).

Every pod template names its node (no scheduler runs in the lab). Create them with
:func:`apply`; the controller-manager makes their pods, and on a played node the harness
(``runtime.Runtime``) or ``resources.play_pod_running`` runs them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes import client

from mirrord.kube.objects import model
from mirrord.lab.kube import resources
from mirrord.lab.kube.resources import container

#: how long the API server may take to serve a CRD it accepted
CRD_TIMEOUT = 30.0

ROLLOUT_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "rollouts.argoproj.io"},
    "spec": {
        "group": "argoproj.io",
        "names": {"kind": "Rollout", "plural": "rollouts", "singular": "rollout"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                # only what the Argo CRD's users read: the selector and workloadRef
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


def template(
    node: str, labels: Mapping[str, str], containers: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"labels": dict(labels)},
        "spec": {
            "nodeName": node,
            "containers": [dict(c) for c in containers] if containers else [container()],
        },
    }


def deployment(
    name: str,
    node: str,
    labels: Mapping[str, str],
    *,
    kind: str = "Deployment",
    containers: Sequence[Mapping[str, Any]] | None = None,
    replicas: int = 1,
) -> dict[str, Any]:
    """A Deployment, StatefulSet or ReplicaSet (same shape) selecting ``labels``."""
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": dict(labels)},
        "template": template(node, labels, containers),
    }
    if kind == "StatefulSet":
        spec["serviceName"] = name
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def job(
    name: str,
    node: str,
    labels: Mapping[str, str],
    containers: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    tmpl = template(node, labels, containers)
    tmpl["spec"]["restartPolicy"] = "Never"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": tmpl},
    }


def cronjob(name: str, node: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """A CronJob that never fires on its own (tests start its Jobs, see ``cronjob_run``)."""
    job_spec = job(name, node, labels)["spec"]
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name},
        "spec": {"schedule": "0 0 1 1 *", "suspend": True, "jobTemplate": {"spec": job_spec}},
    }


def cronjob_run(cron: Any, run: str) -> dict[str, Any]:
    """A Job of the CronJob ``cron`` (its model), as the controller would start one."""
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": run,
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": cron.metadata.name,
                    "uid": cron.metadata.uid,
                    "controller": True,
                }
            ],
        },
        "spec": client.ApiClient().sanitize_for_serialization(cron.spec.job_template.spec),
    }
    return manifest


def cronjob_active_status(run: Any) -> dict[str, Any]:
    """The status patch by which the CronJob controller lists a run it started."""
    ref = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": run.metadata.name,
        "namespace": run.metadata.namespace,
        "uid": run.metadata.uid,
    }
    return {"status": {"active": [ref], "lastScheduleTime": resources.now()}}


def service(name: str, selector: Mapping[str, str], port: int = 8080) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": dict(selector), "ports": [{"port": port, "targetPort": port}]},
    }


def rollout(
    name: str, node: str, labels: Mapping[str, str], workload_ref: str | None = None
) -> dict[str, Any]:
    """An Argo Rollout with its own template, or one pointing at a Deployment."""
    spec: dict[str, Any] = {"replicas": 1}
    if workload_ref:
        spec["workloadRef"] = {"apiVersion": "apps/v1", "kind": "Deployment", "name": workload_ref}
    else:
        spec["selector"] = {"matchLabels": dict(labels)}
        spec["template"] = template(node, labels)
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name},
        "spec": spec,
    }


def apply(api: client.ApiClient, namespace: str, manifest: Mapping[str, Any]) -> Any:
    """Create ``manifest`` in ``namespace`` through the API group its kind belongs to."""
    kind = manifest["kind"]
    apps, batch, core = client.AppsV1Api(api), client.BatchV1Api(api), client.CoreV1Api(api)
    creators: dict[str, tuple[Any, Any]] = {
        "Deployment": (apps.create_namespaced_deployment, client.V1Deployment),
        "StatefulSet": (apps.create_namespaced_stateful_set, client.V1StatefulSet),
        "ReplicaSet": (apps.create_namespaced_replica_set, client.V1ReplicaSet),
        "Job": (batch.create_namespaced_job, client.V1Job),
        "CronJob": (batch.create_namespaced_cron_job, client.V1CronJob),
        "Service": (core.create_namespaced_service, client.V1Service),
        "Pod": (core.create_namespaced_pod, client.V1Pod),
    }
    if kind == "Rollout":
        return client.CustomObjectsApi(api).create_namespaced_custom_object(
            "argoproj.io", "v1alpha1", namespace, "rollouts", dict(manifest)
        )
    create, cls = creators[kind]
    return create(namespace, model(cls, manifest))


def create_namespace(api: client.ApiClient, name: str) -> None:
    client.CoreV1Api(api).create_namespace(
        model(
            client.V1Namespace,
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )
    )


def install_rollout_crd(api: client.ApiClient) -> None:
    """The Argo Rollout CRD (schema-less: the lab runs no Argo controller)."""
    from kubernetes.client.exceptions import ApiException

    ext = client.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(model(client.V1CustomResourceDefinition, ROLLOUT_CRD))
    except ApiException as exc:
        if exc.status != 409:
            raise
    # a new CRD's objects are served a moment later (404 "page not found" until then)
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + CRD_TIMEOUT
    while True:
        try:
            custom.list_cluster_custom_object("argoproj.io", "v1alpha1", "rollouts")
            return
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.1)
