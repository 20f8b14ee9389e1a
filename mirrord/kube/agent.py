"""The agent in the cluster: joining the one a target already has, or starting one (a Job
or an ephemeral container) and waiting until it says it is ready.

The token reaches the agent through a Secret that its pod spec names (``secretKeyRef``),
never in the spec itself. A Job's Secret is owned by the Job, so it goes when the Job's
``ttlSecondsAfterFinished`` removes it; sessions that join the agent read the token
there (RBAC: ``get secrets``). An ephemeral agent is not shared: its Secret is deleted as
soon as the agent has started (it read it then), and is owned by the target pod besides.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mirrord.kube.agent_spec import (
    AGENT_CONTAINER,
    APP_LABEL,
    PORT_ANNOTATION,
    TARGET_LABEL,
    TOKEN_ENV,
    TOKEN_KEY,
    AgentPlan,
    AgentSettings,
    ephemeral_container,
    job_manifest,
    owner_reference,
    target_key,
    token_secret,
)
from mirrord.kube.errors import KubeError, call
from mirrord.kube.resolve import ResolvedTarget
from mirrord.kube.rest import Rest, RestError, path

#: Waiting reasons after which a container will not start by itself.
HOPELESS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerError"}
LOG_TAIL = 10


@dataclass(frozen=True)
class AgentPod:
    """A running agent and how to reach it (through a port-forward to ``pod:port``)."""

    namespace: str
    pod: str
    container: str
    port: int
    token: str
    job: str | None  # None: an ephemeral container
    started: bool  # by this session (False: joined)

    @property
    def address(self) -> str:
        """What the intproxy is told to connect to."""
        return f"kube:{self.namespace}/{self.pod}:{self.port}"


Report = Callable[[str], None]


def _nothing(_: str) -> None:
    pass


# ---------------------------------------------------------------- joining


def find_agent(api: Any, settings: AgentSettings, target: ResolvedTarget) -> AgentPod | None:
    """The running agent of ``target`` that an earlier session started, if any."""
    if target.targetless or settings.ephemeral:
        return None
    rest = Rest.of(api)
    ns = settings.namespace or target.namespace
    selector = f"{APP_LABEL[0]}={APP_LABEL[1]},{TARGET_LABEL}={target_key(target)}"
    pods = (
        call(
            f"list pods in namespace {ns}", rest.get, path("v1", ns, "pods"), labelSelector=selector
        ).get("items")
        or []
    )
    pods.sort(key=lambda p: p["metadata"]["creationTimestamp"], reverse=True)
    for pod in pods:
        meta = pod["metadata"]
        if not _agent_running(pod, AGENT_CONTAINER) or meta.get("deletionTimestamp"):
            continue
        port = (meta.get("annotations") or {}).get(PORT_ANNOTATION, "")
        secret = _token_secret_name(pod)
        if not port.isdigit() or secret is None:
            continue
        token = _read_token(rest, ns, secret)
        if token is None:
            continue  # its Job is going away with the Secret
        job = (meta.get("labels") or {}).get("job-name")
        return AgentPod(ns, meta["name"], AGENT_CONTAINER, int(port), token, job, False)
    return None


def _token_secret_name(pod: dict[str, Any]) -> str | None:
    for container in pod["spec"]["containers"]:
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if env["name"] == TOKEN_ENV and ref is not None:
                return str(ref["name"])
    return None


def _read_token(rest: Rest, ns: str, name: str) -> str | None:
    try:
        secret = call(
            f"get secrets in namespace {ns} (to join the agent of this target)",
            rest.get,
            path("v1", ns, "secrets", name),
        )
    except KubeError as exc:
        if exc.status == 404:
            return None
        raise
    data = (secret.get("data") or {}).get(TOKEN_KEY)
    return base64.b64decode(data).decode() if data else None


# ---------------------------------------------------------------- access


def require(api: Any, namespace: str, verb: str, resource: str, why: str) -> None:
    """Fail now, with one line, if RBAC does not let us ``verb resource`` (e.g. create
    pods/portforward) in ``namespace``: better than an agent nobody can reach."""
    name, _, sub = resource.partition("/")
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {
            "resourceAttributes": {
                "namespace": namespace,
                "verb": verb,
                "resource": name,
                **({"subresource": sub} if sub else {}),
            }
        },
    }
    try:
        answer = Rest.of(api).post(
            path("authorization.k8s.io/v1", None, "selfsubjectaccessreviews"), review
        )
    except RestError:
        return  # cannot ask: the call itself will tell
    if not (answer.get("status") or {}).get("allowed"):
        raise KubeError(
            f'{why}: RBAC forbids you to {verb} resource "{resource}" in namespace "{namespace}"',
            403,
        )


# ---------------------------------------------------------------- starting


def start_agent(
    api: Any, settings: AgentSettings, target: ResolvedTarget, report: Report = _nothing
) -> AgentPod:
    """A new agent for ``target``: an ephemeral container if ``settings.ephemeral`` (and
    there is a target), else a Job. Returns once it is ready; on failure nothing is left
    behind and the error carries the pod's events and last log lines."""
    rest = Rest.of(api)
    ns = settings.namespace or target.namespace
    if settings.ephemeral and not target.targetless:
        return _start_ephemeral(rest, settings, target, report)
    return _start_job(rest, settings, target, AgentPlan.new(ns), report)


def _start_job(
    rest: Rest, settings: AgentSettings, target: ResolvedTarget, plan: AgentPlan, report: Report
) -> AgentPod:
    token = secrets.token_hex(16)
    ns = plan.namespace
    secrets_path = path("v1", ns, "secrets")
    call(f"create secrets in namespace {ns}", rest.post, secrets_path, token_secret(plan, token))
    try:
        job = call(
            f"create jobs in namespace {ns}",
            rest.post,
            path("batch/v1", ns, "jobs"),
            job_manifest(settings, target, plan),
        )
    except BaseException:
        _quietly(rest.delete, f"{secrets_path}/{plan.token_secret}")
        raise
    report(f"agent job {ns}/{plan.name}")
    try:
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": plan.name}
        owner["uid"] = job["metadata"]["uid"]
        # from now on the Secret goes with the Job
        call(
            f"patch secrets in namespace {ns}",
            rest.patch,
            f"{secrets_path}/{plan.token_secret}",
            {"metadata": {"ownerReferences": [owner_reference(owner)]}},
        )
        deadline = time.monotonic() + settings.startup_timeout
        pod = _job_pod(rest, ns, plan.name, deadline)
        _wait_ready(rest, ns, pod, AGENT_CONTAINER, deadline, settings.startup_timeout)
    except BaseException:
        # Background: the garbage collector takes its pod and the token Secret with it
        _quietly(
            rest.delete, path("batch/v1", ns, "jobs", plan.name), propagationPolicy="Background"
        )
        raise
    return AgentPod(ns, pod, AGENT_CONTAINER, plan.port, token, plan.name, True)


def _start_ephemeral(
    rest: Rest, settings: AgentSettings, target: ResolvedTarget, report: Report
) -> AgentPod:
    ns = target.namespace  # an ephemeral container lives in the target pod
    plan = AgentPlan.new(ns)
    token = secrets.token_hex(16)
    pod_owner = {"apiVersion": "v1", "kind": "Pod", "name": target.pod, "uid": target.pod_uid}
    secrets_path = path("v1", ns, "secrets")
    call(
        f"create secrets in namespace {ns}",
        rest.post,
        secrets_path,
        token_secret(plan, token, owner=pod_owner),
    )
    try:
        patch = {"spec": {"ephemeralContainers": [ephemeral_container(settings, target, plan)]}}
        call(
            f"patch pods/ephemeralcontainers in namespace {ns}",
            rest.patch,
            path("v1", ns, "pods", target.pod) + "/ephemeralcontainers",
            patch,
        )
        report(f"ephemeral container {plan.name} in pod {ns}/{target.pod}")
        deadline = time.monotonic() + settings.startup_timeout
        _wait_ready(rest, ns, target.pod, plan.name, deadline, settings.startup_timeout)
    finally:
        # it has read its token (or never will): nobody else needs the Secret
        _quietly(rest.delete, f"{secrets_path}/{plan.token_secret}")
    return AgentPod(ns, target.pod, plan.name, plan.port, token, None, True)


def _job_pod(rest: Rest, ns: str, job: str, deadline: float) -> str:
    delay = 0.02
    while True:
        pods = call(
            f"list pods in namespace {ns}",
            rest.get,
            path("v1", ns, "pods"),
            labelSelector=f"job-name={job}",
        ).get("items")
        if pods:
            return str(pods[0]["metadata"]["name"])
        if time.monotonic() > deadline:
            raise KubeError(f"the agent job {ns}/{job} made no pod in time{_events(rest, ns, job)}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


# ---------------------------------------------------------------- waiting


def _container_status(pod: dict[str, Any], container: str) -> dict[str, Any] | None:
    status = pod.get("status") or {}
    every = [
        *(status.get("containerStatuses") or []),
        *(status.get("ephemeralContainerStatuses") or []),
    ]
    return next((s for s in every if s["name"] == container), None)


def _agent_running(pod: dict[str, Any], container: str) -> bool:
    found = _container_status(pod, container)
    return bool(found and (found.get("state") or {}).get("running"))


def _exited(state: dict[str, Any]) -> str:
    term = state["terminated"]
    return (
        f"the agent exited with status {term.get('exitCode')} ({term.get('reason') or 'no reason'})"
    )


def _why_not(pod: dict[str, Any], container: str) -> str | None:
    """Why the agent container will not come up, or None while it still may."""
    phase = (pod.get("status") or {}).get("phase")
    found = _container_status(pod, container)
    state = (found or {}).get("state") or {}
    if state.get("terminated"):
        return _exited(state)
    if phase in ("Failed", "Succeeded"):
        return f"the agent pod is {phase}"
    waiting = state.get("waiting") or {}
    if waiting.get("reason") in HOPELESS:
        return (
            f"the agent container cannot start: {waiting['reason']}: {waiting.get('message', '')}"
        )
    return None


def _wait_ready(
    rest: Rest, ns: str, pod: str, container: str, deadline: float, timeout: float
) -> None:
    """Until the agent container runs and its log has its ready line. The log is polled
    with the pod's status rather than followed: a follow stream need not end when the
    container does (kwok's does not), and the status tells that it did."""
    delay = 0.02
    while True:
        try:
            obj = call(f"get pods in namespace {ns}", rest.get, path("v1", ns, "pods", pod))
        except KubeError as exc:
            if exc.status == 404:
                raise KubeError(f"the agent pod {ns}/{pod} was deleted while starting") from None
            raise
        why = _why_not(obj, container)
        if why is not None:
            raise KubeError(f"{why}{_failure_details(rest, ns, pod, container)}")
        if _agent_running(obj, container) and any(
            _is_ready_line(line) for line in _log(rest, ns, pod, container).splitlines()
        ):
            return
        if time.monotonic() > deadline:
            raise KubeError(
                f"the agent was not ready within {timeout:.0f}s (agent.startup_timeout)"
                + _failure_details(rest, ns, pod, container)
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def _log(rest: Rest, ns: str, pod: str, container: str, tail: int | None = None) -> str:
    query: dict[str, Any] = {"container": container}
    if tail is not None:
        query["tailLines"] = tail
    resp = call(
        f"get pods/log in namespace {ns}",
        rest.request,
        "GET",
        path("v1", ns, "pods", pod) + "/log",
        query=query,
        stream=True,
    )
    try:
        return str(resp.read().decode(errors="replace"))
    finally:
        resp.release_conn()


def _is_ready_line(line: str | bytes) -> bool:
    try:
        doc = json.loads(line)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("ready") is True


# ---------------------------------------------------------------- failures, cleanup


def _events(rest: Rest, ns: str, name: str) -> str:
    try:
        events = (
            rest.get(path("v1", ns, "events"), fieldSelector=f"involvedObject.name={name}").get(
                "items"
            )
            or []
        )
    except Exception:
        return ""
    lines = [
        f"  | {e.get('reason')}: {' '.join((e.get('message') or '').split())}"
        for e in events[-LOG_TAIL:]
    ]
    return ("\nevents of " + name + ":\n" + "\n".join(lines)) if lines else ""


def _failure_details(rest: Rest, ns: str, pod: str, container: str) -> str:
    """The pod's events and the agent's last log lines, for an error message."""
    text = _events(rest, ns, pod)
    try:
        log = _log(rest, ns, pod, container, tail=LOG_TAIL)
    except KubeError:
        log = ""
    lines = [f"  | {line}" for line in log.splitlines() if line.strip()]
    if lines:
        text += f"\nlast lines of the agent's log ({ns}/{pod}):\n" + "\n".join(lines)
    return text


def _quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except Exception:
        pass
