"""The agent in the cluster: joining the one a target already has, or starting one (a Job
or an ephemeral container) and waiting until it says it is ready.

The token reaches the agent through a Secret that its pod spec names (``secretKeyRef``),
never in the spec itself. A Job's Secret is owned by the Job, so it goes when the Job's
``ttlSecondsAfterFinished`` removes it; sessions that join the agent read the token
there (RBAC: ``get secrets``). An ephemeral agent is not shared: its Secret is deleted as
soon as the agent has started (it read it then), and is owned by the target pod besides.
"""

from __future__ import annotations

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
from mirrord.kube.objects import model
from mirrord.kube.resolve import ResolvedTarget

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


def _core(api: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api)


# ---------------------------------------------------------------- joining


def find_agent(api: Any, settings: AgentSettings, target: ResolvedTarget) -> AgentPod | None:
    """The running agent of ``target`` that an earlier session started, if any."""
    if target.targetless or settings.ephemeral:
        return None
    ns = settings.namespace or target.namespace
    selector = f"{APP_LABEL[0]}={APP_LABEL[1]},{TARGET_LABEL}={target_key(target)}"
    pods = call(
        f"list pods in namespace {ns}", _core(api).list_namespaced_pod, ns, label_selector=selector
    ).items
    pods.sort(key=lambda p: p.metadata.creation_timestamp, reverse=True)
    for pod in pods:
        if not _agent_running(pod, AGENT_CONTAINER) or pod.metadata.deletion_timestamp:
            continue
        port = (pod.metadata.annotations or {}).get(PORT_ANNOTATION, "")
        secret = _token_secret_name(pod)
        if not port.isdigit() or secret is None:
            continue
        token = _read_token(api, ns, secret)
        if token is None:
            continue  # its Job is going away with the Secret
        job = (pod.metadata.labels or {}).get("job-name")
        return AgentPod(ns, pod.metadata.name, AGENT_CONTAINER, int(port), token, job, False)
    return None


def _token_secret_name(pod: Any) -> str | None:
    for container in pod.spec.containers:
        for env in container.env or []:
            ref = env.value_from and env.value_from.secret_key_ref
            if env.name == TOKEN_ENV and ref is not None:
                return str(ref.name)
    return None


def _read_token(api: Any, ns: str, name: str) -> str | None:
    import base64

    from kubernetes.client.exceptions import ApiException

    try:
        secret = _core(api).read_namespaced_secret(name, ns)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise_api(exc, f"get secret {name} in namespace {ns} (to join its agent)")
    data = (secret.data or {}).get(TOKEN_KEY)
    return base64.b64decode(data).decode() if data else None


def raise_api(exc: BaseException, doing: str) -> None:
    from mirrord.kube.errors import describe_api_error

    raise describe_api_error(exc, doing) from None


# ---------------------------------------------------------------- access


def require(api: Any, namespace: str, verb: str, resource: str, why: str) -> None:
    """Fail now, with one line, if RBAC does not let us ``verb resource`` (e.g. create
    pods/portforward) in ``namespace``: better than an agent nobody can reach."""
    from kubernetes import client

    group, _, rest = resource.rpartition(".") if "/" not in resource else ("", "", resource)
    name, _, sub = rest.partition("/")
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {
            "resourceAttributes": {
                "namespace": namespace,
                "verb": verb,
                "group": group,
                "resource": name,
                **({"subresource": sub} if sub else {}),
            }
        },
    }
    try:
        answer = client.AuthorizationV1Api(api).create_self_subject_access_review(
            model(client.V1SelfSubjectAccessReview, review)
        )
    except Exception:
        return  # cannot ask: the call itself will tell
    if answer.status is not None and not answer.status.allowed:
        raise KubeError(
            f'{why}: RBAC forbids you to {verb} resource "{rest}" in namespace "{namespace}"',
            403,
        )


# ---------------------------------------------------------------- starting


def start_agent(
    api: Any, settings: AgentSettings, target: ResolvedTarget, report: Report = _nothing
) -> AgentPod:
    """A new agent for ``target``: an ephemeral container if ``settings.ephemeral`` (and
    there is a target), else a Job. Returns once it is ready; on failure nothing is left
    behind and the error carries the pod's events and last log lines."""
    ns = settings.namespace or target.namespace
    if settings.ephemeral and not target.targetless:
        return _start_ephemeral(api, settings, target, report)
    return _start_job(api, settings, target, AgentPlan.new(ns), report)


def _start_job(
    api: Any, settings: AgentSettings, target: ResolvedTarget, plan: AgentPlan, report: Report
) -> AgentPod:
    from kubernetes import client

    core, batch = _core(api), client.BatchV1Api(api)
    token = secrets.token_hex(16)
    ns = plan.namespace
    call(
        f"create secrets in namespace {ns}",
        core.create_namespaced_secret,
        ns,
        model(client.V1Secret, token_secret(plan, token)),
    )
    try:
        job = call(
            f"create jobs in namespace {ns}",
            batch.create_namespaced_job,
            ns,
            model(client.V1Job, job_manifest(settings, target, plan)),
        )
    except BaseException:
        _quietly(core.delete_namespaced_secret, plan.token_secret, ns)
        raise
    report(f"agent job {ns}/{plan.name}")
    try:
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": plan.name}
        owner["uid"] = job.metadata.uid
        # from now on the Secret goes with the Job
        call(
            f"patch secrets in namespace {ns}",
            core.patch_namespaced_secret,
            plan.token_secret,
            ns,
            {"metadata": {"ownerReferences": [owner_reference(owner)]}},
        )
        deadline = time.monotonic() + settings.startup_timeout
        pod = _job_pod(api, ns, plan.name, deadline)
        _wait_ready(api, ns, pod, AGENT_CONTAINER, deadline, settings.startup_timeout)
    except BaseException:
        _delete_job(api, ns, plan.name)
        raise
    return AgentPod(ns, pod, AGENT_CONTAINER, plan.port, token, plan.name, True)


def _start_ephemeral(
    api: Any, settings: AgentSettings, target: ResolvedTarget, report: Report
) -> AgentPod:
    from kubernetes import client

    core = _core(api)
    ns = target.namespace  # an ephemeral container lives in the target pod
    plan = AgentPlan.new(ns)
    token = secrets.token_hex(16)
    pod_owner = {"apiVersion": "v1", "kind": "Pod", "name": target.pod, "uid": target.pod_uid}
    call(
        f"create secrets in namespace {ns}",
        core.create_namespaced_secret,
        ns,
        model(client.V1Secret, token_secret(plan, token, owner=pod_owner)),
    )
    try:
        patch = {"spec": {"ephemeralContainers": [ephemeral_container(settings, target, plan)]}}
        call(
            f"patch pods/ephemeralcontainers in namespace {ns}",
            core.patch_namespaced_pod_ephemeralcontainers,
            target.pod,
            ns,
            patch,
        )
        report(f"ephemeral container {plan.name} in pod {ns}/{target.pod}")
        deadline = time.monotonic() + settings.startup_timeout
        _wait_ready(api, ns, target.pod, plan.name, deadline, settings.startup_timeout)
    finally:
        # it has read its token (or never will): nobody else needs the Secret
        _quietly(core.delete_namespaced_secret, plan.token_secret, ns)
    return AgentPod(ns, target.pod, plan.name, plan.port, token, None, True)


def _job_pod(api: Any, ns: str, job: str, deadline: float) -> str:
    core = _core(api)
    delay = 0.02
    while True:
        pods = call(
            f"list pods in namespace {ns}",
            core.list_namespaced_pod,
            ns,
            label_selector=f"job-name={job}",
        ).items
        if pods:
            return str(pods[0].metadata.name)
        if time.monotonic() > deadline:
            raise KubeError(f"the agent job {ns}/{job} made no pod in time{_events(api, ns, job)}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


# ---------------------------------------------------------------- waiting


def _container_status(pod: Any, container: str) -> Any:
    status = pod.status
    if status is None:
        return None
    every = [*(status.container_statuses or []), *(status.ephemeral_container_statuses or [])]
    return next((s for s in every if s.name == container), None)


def _agent_running(pod: Any, container: str) -> bool:
    found = _container_status(pod, container)
    return bool(found and found.state and found.state.running)


def _why_not(pod: Any, container: str) -> str | None:
    """Why the agent container will not come up, or None while it still may."""
    if pod.status and pod.status.phase in ("Failed", "Succeeded"):
        found = _container_status(pod, container)
        term = found and found.state and found.state.terminated
        if term:
            return f"the agent exited with status {term.exit_code} ({term.reason or 'no reason'})"
        return f"the agent pod is {pod.status.phase}"
    found = _container_status(pod, container)
    if found is None or found.state is None:
        return None
    if found.state.terminated:
        term = found.state.terminated
        return f"the agent exited with status {term.exit_code} ({term.reason or 'no reason'})"
    waiting = found.state.waiting
    if waiting and waiting.reason in HOPELESS:
        return f"the agent container cannot start: {waiting.reason}: {waiting.message or ''}"
    return None


def _wait_ready(
    api: Any, ns: str, pod: str, container: str, deadline: float, timeout: float
) -> None:
    """Until the agent container runs and its log says it is ready."""
    from kubernetes.client.exceptions import ApiException

    core = _core(api)
    delay = 0.02
    while True:
        try:
            obj = core.read_namespaced_pod(pod, ns)
        except ApiException as exc:
            if exc.status == 404:
                raise KubeError(f"the agent pod {ns}/{pod} was deleted while starting") from None
            raise_api(exc, f"get pods in namespace {ns}")
        why = _why_not(obj, container)
        if why is not None:
            raise KubeError(f"{why}{_failure_details(api, ns, pod, container)}")
        if _agent_running(obj, container):
            break
        if time.monotonic() > deadline:
            raise KubeError(
                f"the agent did not start within {timeout:.0f}s (agent.startup_timeout)"
                + _failure_details(api, ns, pod, container)
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    _wait_ready_line(api, ns, pod, container, deadline, timeout)


def _wait_ready_line(
    api: Any, ns: str, pod: str, container: str, deadline: float, timeout: float
) -> None:
    """The agent prints one JSON ``{"ready": true, ...}`` line once it listens."""
    resp = call(
        f"get pods/log in namespace {ns}",
        _core(api).read_namespaced_pod_log,
        pod,
        ns,
        container=container,
        follow=True,
        _preload_content=False,
        _request_timeout=(10, max(1.0, deadline - time.monotonic())),
    )
    try:
        buf = b""
        for chunk in resp.stream(4096):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if _is_ready_line(line):
                    return
            if time.monotonic() > deadline:
                break
    except Exception:  # a read timeout, a dropped stream: the message below says it
        pass
    finally:
        resp.release_conn()
    raise KubeError(
        f"the agent did not say it is ready within {timeout:.0f}s (agent.startup_timeout)"
        + _failure_details(api, ns, pod, container)
    )


def _is_ready_line(line: bytes) -> bool:
    try:
        doc = json.loads(line)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("ready") is True


# ---------------------------------------------------------------- failures, cleanup


def _events(api: Any, ns: str, name: str) -> str:
    try:
        events = (
            _core(api).list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
        )
    except Exception:
        return ""
    lines = [f"  | {e.reason}: {' '.join((e.message or '').split())}" for e in events[-LOG_TAIL:]]
    return ("\nevents of " + name + ":\n" + "\n".join(lines)) if lines else ""


def _failure_details(api: Any, ns: str, pod: str, container: str) -> str:
    """The pod's events and the agent's last log lines, for an error message."""
    text = _events(api, ns, pod)
    try:
        log = _core(api).read_namespaced_pod_log(
            pod, ns, container=container, tail_lines=LOG_TAIL, _request_timeout=5
        )
    except Exception:
        log = ""
    lines = [f"  | {line}" for line in str(log).splitlines() if line.strip()]
    if lines:
        text += f"\nlast lines of the agent's log ({ns}/{pod}):\n" + "\n".join(lines)
    return text


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        pass


def _delete_job(api: Any, ns: str, job: str) -> None:
    from kubernetes import client

    # Background: the garbage collector takes its pod and the token Secret with it
    _quietly(
        lambda: client.BatchV1Api(api).delete_namespaced_job(
            job, ns, propagation_policy="Background"
        )
    )
