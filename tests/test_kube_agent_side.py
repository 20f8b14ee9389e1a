"""The agent's side of a cluster target: finding a container's process by its id in
``/proc/*/cgroup`` (real cgroups here), and leaving when no client comes."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrord.lab.kube.played_pods import cgroup_root
from mirrord.targets.container import ContainerTarget, container_processes, in_container
from mirrord.targets.local import TargetError

ID = "4f1c" + "a" * 60


@pytest.mark.parametrize(
    "path",
    [
        f"/kubepods/burstable/pod1234/{ID}",  # cgroupfs driver
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-pod12.slice/cri-containerd-{ID}.scope",
        f"/kubepods.slice/kubepods-besteffort.slice/crio-{ID}.scope",
        f"/docker/{ID}",
        f"/../cri-containerd-{ID}.scope",  # seen from inside a cgroup namespace
        f"/kubepods/pod1/cri-containerd-{ID}/init",  # a child cgroup of the container's
    ],
)
def test_every_runtimes_cgroup_naming_is_recognised(path: str) -> None:
    assert in_container([path], ID)


@pytest.mark.parametrize(
    "path",
    [
        f"/kubepods/pod1/cri-containerd-{ID[:-1]}b.scope",  # another container
        f"/kubepods/pod1/cri-containerd-x{ID}.scope",  # the id inside a longer word
        "/user.slice/user-0.slice/session-1.scope",
    ],
)
def test_other_cgroups_are_not_the_container(path: str) -> None:
    assert not in_container([path], ID)


@pytest.mark.parametrize("text", ["container/", "container/xyz", "pod/abc", f"container/{ID}/x"])
def test_bad_container_targets_get_one_line(text: str) -> None:
    with pytest.raises(TargetError, match="expected container/<hex id>"):
        ContainerTarget.parse(text)


@pytest.fixture
def container_cgroup() -> Iterator[tuple[str, Path]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (not root)")
    cid = secrets.token_hex(32)
    path = cgroup_root() / "kubepods" / f"pod{secrets.token_hex(4)}" / f"cri-containerd-{cid}"
    path.mkdir(parents=True)
    try:
        yield cid, path
    finally:
        for d in (path, path.parent):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.05)


def test_the_containers_oldest_process_is_found_in_proc(
    container_cgroup: tuple[str, Path],
) -> None:
    cid, path = container_cgroup
    procs = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    outsider = subprocess.Popen(["sleep", "30"])
    try:
        for p in procs:
            (path / "cgroup.procs").write_text(str(p.pid))
        assert container_processes(cid) == [p.pid for p in procs]
        assert ContainerTarget.parse(f"container/containerd://{cid}").process() == procs[0].pid
        assert outsider.pid not in container_processes(cid)
    finally:
        for p in (*procs, outsider):
            p.kill()
            p.wait()
    with pytest.raises(TargetError, match=f"no process of container {cid[:12]}"):
        ContainerTarget(cid).process()


def test_an_agent_nobody_connects_to_leaves_after_its_first_client_timeout() -> None:
    env = {**os.environ, "MIRRORD_AGENT_TOKEN": "t" * 32}
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mirrord.agent",
            "--listen",
            "127.0.0.1:0",
            "--idle-timeout",
            "60",
            "--first-client-timeout",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"ready": true' in proc.stdout
    assert 1 <= time.monotonic() - started < 20
    assert "no client for" in proc.stderr
