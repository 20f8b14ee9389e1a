"""Sessions on Kubernetes targets, end to end: the CLI against the lab's real control
plane, the agent as a Job on the target's node (played by the harness: its command runs
as a process in a network namespace of its own), reached through a port-forward."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import requests
from helpers import last_json
from kube_sessions import App, Staging, incoming, script
from kubernetes import client

from mirrord.lab import remote_files
from mirrord.lab.kube import resources

APP = f"""
    import json, os, socket, urllib.request
    backend = urllib.request.urlopen("http://backend.staging.svc:8080/").read().decode()
    local = urllib.request.urlopen("http://127.0.0.1:9090/").read().decode()
    with open("{remote_files.ROOT}/config/settings.json") as f:
        settings = json.load(f)
    print(json.dumps({{
        "backend": json.loads(backend)["service"],
        "loopback": local,
        "address": socket.gethostbyname("db.staging.svc"),
        "greeting": os.environ.get("STAGING_GREETING"),
        "settings": settings,
    }}))
"""
TARGETS = ["deployment/staging", "pod/{pod}/container/main"]


def expected(staging: Staging) -> dict[str, object]:
    return {
        "backend": "backend",
        "loopback": "staging-loopback",
        "address": staging.lab.backend_addr,
        "greeting": "hello-from-staging",
        "settings": remote_files.SETTINGS,
    }


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:.0f}s")
        time.sleep(0.1)


# ---------------------------------------------------------------- outgoing, DNS, env, files


@pytest.mark.parametrize("target", TARGETS)
def test_outgoing_dns_env_files(staging: Staging, tmp_path: Path, target: str) -> None:
    target = target.format(pod=staging.pod)
    proc = staging.mirrord("-t", target, "-n", staging.namespace, script(tmp_path, APP))
    assert last_json(proc) == expected(staging)
    # the progress, as plain lines when stderr is not a terminal
    phases = [line.split(" (")[0] for line in proc.stderr.splitlines()]
    assert phases[0] == f"mirrord: resolving target {target}"
    assert "mirrord: creating agent" in phases and "mirrord: port-forward to the agent" in phases
    assert phases[-1].startswith(f"mirrord: connected to pod {staging.namespace}/{staging.pod}")


def test_exec_with_a_pod_container_target(staging: Staging) -> None:
    proc = staging.mirrord(
        "exec",
        "-t",
        f"pod/{staging.pod}/container/main",
        "-n",
        staging.namespace,
        "--",
        "python3",
        "-c",
        "import os, socket; print(os.environ['SERVICE_NAME'], socket.gethostbyname('tls.staging.svc'))",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["staging-service", staging.lab.backend_addr]


def test_ephemeral_agent(staging: Staging, tmp_path: Path) -> None:
    proc = staging.mirrord(
        "-t", "deployment/staging", "-n", staging.namespace, "-e", script(tmp_path, APP)
    )
    assert last_json(proc) == expected(staging)
    core = client.CoreV1Api(staging.kube.api_client())
    pod = core.read_namespaced_pod(staging.pod, staging.namespace)
    (agent,) = pod.spec.ephemeral_containers
    assert agent.name.startswith("mirrord-agent-") and agent.target_container_name == "main"
    assert staging.agent_jobs() == []  # no Job: the agent was a container of the target
    # its token's Secret went once the agent had read it
    secrets = core.list_namespaced_secret(staging.namespace, label_selector="app=mirrord")
    assert secrets.items == []


# ---------------------------------------------------------------- incoming


@pytest.mark.parametrize("target", TARGETS)
def test_mirror_then_filtered_steal(
    staging: Staging, tmp_path: Path, start_app, target: str
) -> None:
    target = target.format(pod=staging.pod)
    url = f"http://{staging.lab.staging_addr}:8080/"
    common = ("-t", target, "-n", staging.namespace)
    mirror: App = start_app("mirror", *common, "-f", incoming(tmp_path, "mirror"))
    answers = [requests.post(url, data=f"m{i}", timeout=10).text for i in range(3)]
    # the client is answered by the target, and the local app sees a copy of each request
    assert set(answers) == {"staging-service"}
    assert sorted(s["body"] for s in mirror.seen(3)) == ["m0", "m1", "m2"]
    mirror.stop()

    thief: App = start_app("thief", *common, "-f", incoming(tmp_path, "steal", "x-user: me"))
    answers = [
        requests.post(url, data=f"s{i}", timeout=10, headers=h).text
        for i, h in enumerate([{}, {"x-user": "me"}, {}])
    ]
    assert answers[0] == answers[2] == "staging-service"
    assert '"who": "thief"' in answers[1]
    assert [s["body"] for s in thief.seen(1)] == ["s1"]


def test_two_sessions_with_different_header_filters_share_one_agent(
    staging: Staging, tmp_path: Path, start_app
) -> None:
    common = ("-t", "deployment/staging", "-n", staging.namespace)
    start_app("app-of-me", *common, "-f", incoming(tmp_path, "steal", "x-user: me"))
    first = staging.agent_jobs()
    you = start_app("app-of-you", *common, "-f", incoming(tmp_path, "steal", "x-user: you"))
    assert "joining the agent" in you.proc.stderr.readline() + you.proc.stderr.readline()
    assert staging.agent_jobs() == first and len(first) == 1
    url = f"http://{staging.lab.staging_addr}:8080/"
    assert requests.post(url, data="1", headers={"x-user": "me"}, timeout=10).json()["who"] == (
        "app-of-me"
    )
    assert requests.post(url, data="2", headers={"x-user": "you"}, timeout=10).json()["who"] == (
        "app-of-you"
    )
    assert requests.post(url, data="3", timeout=10).text == "staging-service"
    # an unfiltered steal of the stolen port is refused, as on local targets
    proc = staging.mirrord(
        *common,
        "-f",
        incoming(tmp_path, "steal"),
        script(
            tmp_path,
            "import socket; s = socket.socket(); s.bind(('0.0.0.0', 8080)); s.listen(); print('listening')",
            "third.py",
        ),
    )
    assert proc.returncode != 0 and "already stolen" in proc.stderr, proc.stderr


# ---------------------------------------------------------------- targetless


def test_targetless_session_in_a_namespace(staging: Staging, tmp_path: Path) -> None:
    # the targetless agent's pod gets the lab's network (a pod network that reaches the
    # staging services and their DNS)
    staging.runtime.network_for = lambda pod: staging.lab.staging_ns
    code = """
        import json, socket, urllib.request
        body = urllib.request.urlopen("http://backend.staging.svc:8080/").read()
        print(json.dumps({"backend": json.loads(body)["service"],
                          "address": socket.gethostbyname("db.staging.svc")}))
    """
    proc = staging.mirrord("-t", "targetless", "-n", staging.namespace, script(tmp_path, code))
    assert last_json(proc) == {"backend": "backend", "address": staging.lab.backend_addr}
    assert f"connected to targetless in namespace {staging.namespace}" in proc.stderr


# ---------------------------------------------------------------- the agent goes


def test_the_agent_job_is_gone_after_the_session(staging: Staging, tmp_path: Path) -> None:
    proc = staging.mirrord(
        "-t", "deployment/staging", "-n", staging.namespace, script(tmp_path, APP)
    )
    assert proc.returncode == 0, proc.stderr
    wait_until(lambda: staging.agent_jobs() == [], what="the agent Job gone (agent.ttl)")
    core = client.CoreV1Api(staging.kube.api_client())
    # its token Secret went with it (owned by the Job)
    wait_until(
        lambda: (
            not core.list_namespaced_secret(staging.namespace, label_selector="app=mirrord").items
        ),
        what="the token Secret gone",
    )


def test_the_agent_job_is_gone_after_the_cli_was_killed(staging: Staging, tmp_path: Path) -> None:
    code = "import time, urllib.request\nurllib.request.urlopen('http://backend.staging.svc:8080/')\nprint('up', flush=True)\ntime.sleep(600)"
    app = staging.popen("-t", "deployment/staging", "-n", staging.namespace, script(tmp_path, code))
    assert app.stdout is not None and app.stdout.readline().strip() == "up"
    assert len(staging.agent_jobs()) == 1
    os.kill(app.pid, signal.SIGKILL)  # the CLI became the app: nothing of it says goodbye
    app.wait()
    wait_until(lambda: staging.agent_jobs() == [], what="the agent Job gone after SIGKILL")


def test_a_broken_port_forward_fails_the_apps_calls(staging: Staging, tmp_path: Path) -> None:
    code = """
        import socket, sys, time, urllib.request
        urllib.request.urlopen("http://backend.staging.svc:8080/").read()
        print("first", flush=True)
        sys.stdin.readline()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen("http://backend.staging.svc:8080/", timeout=5).read()
            except OSError as exc:
                print("failed:", exc, flush=True)
                if "timed out" not in str(exc):
                    break  # (a timeout: the forward may not have noticed the pod's end yet)
            time.sleep(0.2)
    """
    app = staging.popen(
        "-t",
        "deployment/staging",
        "-n",
        staging.namespace,
        script(tmp_path, code),
        stdin=__import__("subprocess").PIPE,
    )
    assert app.stdout is not None and app.stdin is not None
    assert app.stdout.readline().strip() == "first"
    (job,) = staging.agent_jobs()
    batch = client.BatchV1Api(staging.kube.api_client())
    batch.delete_namespaced_job(job, staging.namespace, propagation_policy="Background")
    app.stdin.write("go\n")
    app.stdin.flush()
    out, err = app.communicate(timeout=60)
    assert "failed:" in out, (out, err)
    # why, in one line: the exception's text says it where the Python layer made the call;
    # the native relay (socket calls of the interpreter, C extensions) can only give errno
    # to the app, so it prints the line once
    assert "no connection to the agent (the port-forward to pod" in out + err, (out, err)


# ---------------------------------------------------------------- RBAC


def user_kubeconfig(staging: Staging, name: str, rules: list[dict]) -> str:
    """A kubeconfig of a service account that may do only ``rules`` in the namespace."""
    api = staging.kube.api_client()
    resources.create_service_account(api, name, staging.namespace)
    resources.grant(api, name, staging.namespace, rules)
    token = staging.kube.service_account_token(name, staging.namespace)
    path = staging.kube.dir / f"{staging.namespace}-{name}.kubeconfig"
    return str(staging.kube.write_token_kubeconfig(path, token, user=name))


READ = {
    "apiGroups": ["", "apps"],
    "resources": ["pods", "deployments", "pods/log"],
    "verbs": ["get", "list"],
}
MAKE_AGENT = [
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "patch", "get", "delete"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
]
FORWARD = {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["create", "get"]}


@pytest.mark.parametrize(
    ("rules", "denied"),
    [
        ([READ, *MAKE_AGENT], 'create resource "pods/portforward"'),
        ([READ, *MAKE_AGENT, {**FORWARD, "verbs": ["create"]}], 'get resource "pods/portforward"'),
        ([READ, MAKE_AGENT[0], FORWARD], 'create resource "jobs" in API group "batch"'),
    ],
    ids=["no-portforward", "no-portforward-get", "no-jobs-create"],
)
def test_missing_rbac_is_named(
    staging: Staging, tmp_path: Path, rules: list[dict], denied: str
) -> None:
    kubeconfig = user_kubeconfig(staging, f"dev-{len(rules)}", rules)
    proc = staging.mirrord(
        "-t",
        "deployment/staging",
        "-n",
        staging.namespace,
        script(tmp_path, APP),
        env={"KUBECONFIG": kubeconfig},
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("mirrord: ") and denied in error, proc.stderr
    wait_until(lambda: staging.agent_jobs() == [], what="nothing left behind")


def test_joining_needs_to_read_the_agents_secret(
    staging: Staging, tmp_path: Path, start_app
) -> None:
    start_app("first", "-t", "deployment/staging", "-n", staging.namespace)
    rules = [READ, *MAKE_AGENT[1:], FORWARD]  # everything but reading secrets
    kubeconfig = user_kubeconfig(staging, "joiner", rules)
    proc = staging.mirrord(
        *("-t", "deployment/staging", "-n", staging.namespace, script(tmp_path, APP)),
        env={"KUBECONFIG": kubeconfig},
    )
    assert proc.returncode == 1, proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("mirrord: cannot get secrets in namespace ")
    assert 'cannot get resource "secrets"' in error


def test_an_agent_that_cannot_start_is_reported_with_its_log(
    kube_cluster, kube_ns: str, lab, runtime, tmp_path: Path
) -> None:
    from mirrord.lab.kube import workloads
    from mirrord.lab.kube.played_pods import Claim
    from mirrord.lab.kube.staging import LABELS, NODE

    # a pod whose container has no process on the node: the agent cannot find it
    runtime.claim(Claim(kube_ns, LABELS, lab.staging_ns, {}))
    api = kube_cluster.api_client()
    workloads.apply(api, kube_ns, workloads.deployment("ghost", NODE, LABELS))
    wait_until(
        lambda: any(
            p.status.phase == "Running"
            for p in client.CoreV1Api(api).list_namespaced_pod(kube_ns).items
        ),
        what="the ghost pod running",
    )
    staging = Staging(kube_cluster, lab, runtime, kube_ns, "")
    proc = staging.mirrord("-t", "deployment/ghost", "-n", kube_ns, script(tmp_path, APP))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "the agent exited with status 1" in proc.stderr
    assert "last lines of the agent's log" in proc.stderr
    assert "no process of container" in proc.stderr  # the agent's own words
    wait_until(lambda: staging.agent_jobs() == [], what="the failed agent's Job removed")
