"""The agent image (``Dockerfile.agent``), built here without Docker and without a
registry: Debian's podman (with runc), and a base image made by mmdebstrap.

- The base (Debian bookworm minbase with python3, pip, iptables, iproute2) is made once
  into ``~/.cache/mirrord-agent-image/`` (33-106 s) and imported into podman's store.
- The image is built with ``--network=none`` from a context holding the mirrord wheel
  and the wheelhouse that ``scripts/setup`` fills (``~/.cache/mirrord-wheelhouse``), and
  tagged with a digest of what went in, so an unchanged tree reuses it (15-20 s if not).

``scripts/agent-image`` runs :func:`build`; the podman test uses :func:`ensure_image`.
podman's defaults are adjusted on the command line (``--runtime runc``: crun refuses the
hybrid cgroup hierarchy; ulimits within the host's hard limits), not in /etc.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CACHE = Path(
    os.environ.get("MIRRORD_AGENT_IMAGE_CACHE", Path.home() / ".cache/mirrord-agent-image")
)
WHEELHOUSE = Path(os.environ.get("MIRRORD_WHEELHOUSE", Path.home() / ".cache/mirrord-wheelhouse"))
BASE_REVISION = "r1"  # bump when the base's package list changes
BASE_PACKAGES = (
    "python3",
    "python3-pip",
    "python-is-python3",
    "ca-certificates",
    "iptables",
    "iproute2",
)
BASE_IMAGE = f"localhost/mirrord-agent-base:bookworm-{BASE_REVISION}"
IMAGE = "localhost/mirrord-agent"
ULIMITS = ("nofile=20000:20000", "nproc=32768:32768")


class ImageError(RuntimeError):
    pass


def podman() -> list[str]:
    """podman with runc (crun refuses cgroups in hybrid mode)."""
    exe = shutil.which("podman")
    runc = shutil.which("runc") or "/usr/sbin/runc"
    if exe is None:
        raise ImageError("podman is not installed (scripts/setup installs it)")
    return [exe, "--runtime", runc]


def ulimit_args() -> list[str]:
    return [arg for u in ULIMITS for arg in ("--ulimit", u)]


def _run(argv: list[str], what: str, timeout: float = 600) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ImageError(f"{what} failed ({proc.returncode}):\n{tail}")
    return proc.stdout


def image_exists(name: str) -> bool:
    return subprocess.run([*podman(), "image", "exists", name], capture_output=True).returncode == 0


def _apt_sources() -> list[str]:
    """This machine's apt sources, so mmdebstrap uses the mirror apt uses here."""
    found = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    if (
        Path("/etc/apt/sources.list").is_file()
        and Path("/etc/apt/sources.list").read_text().strip()
    ):
        found.insert(0, Path("/etc/apt/sources.list"))
    return [str(p) for p in found]


def base_tarball() -> Path:
    """The base root file system, made once (mmdebstrap) and kept under ~/.cache."""
    tar = CACHE / f"bookworm-minbase-{BASE_REVISION}.tar"
    if tar.is_file():
        return tar
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise ImageError("mmdebstrap is not installed (scripts/setup installs it)")
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = tar.with_name(f"{tar.stem}.partial.tar")  # mmdebstrap goes by the suffix
    _run(
        [
            mmdebstrap,
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            "--aptopt=Acquire::Retries=3",
            "bookworm",
            str(partial),
            *_apt_sources(),
        ],
        "mmdebstrap (the agent image's base)",
        timeout=900,
    )
    partial.rename(tar)
    return tar


def ensure_base() -> str:
    if not image_exists(BASE_IMAGE):
        _run(
            [
                *podman(),
                "import",
                "--change",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                str(base_tarball()),
                BASE_IMAGE,
            ],
            "podman import (the base)",
        )
    return BASE_IMAGE


def _wheels(context: Path) -> None:
    """The mirrord wheel and its dependencies (the wheelhouse) into the build context."""
    out = context / "agent-wheels"
    out.mkdir(parents=True)
    wheels = sorted(WHEELHOUSE.glob("*.whl"))
    if not wheels:
        raise ImageError(f"no wheelhouse at {WHEELHOUSE}: run scripts/setup, which fills it")
    for wheel in wheels:
        if not wheel.name.startswith("mirrord_py-"):
            shutil.copy2(wheel, out)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(REPO),
        ],
        "building the mirrord wheel",
    )


def _digest() -> str:
    """What the image is made of: the Dockerfile, the package's files, the wheelhouse."""
    h = hashlib.sha256(BASE_IMAGE.encode())
    files = [REPO / "Dockerfile.agent", REPO / "pyproject.toml", REPO / "setup.py"]
    files += sorted(
        p for p in (REPO / "mirrord").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    files += sorted((REPO / "sitecustomize_hook").rglob("*.py"))
    for path in files:
        if path.is_file():
            h.update(str(path.relative_to(REPO)).encode())
            h.update(path.read_bytes())
    for wheel in sorted(WHEELHOUSE.glob("*.whl")):
        h.update(wheel.name.encode())
    return h.hexdigest()[:16]


def build(tag: str | None = None) -> str:
    """Build the agent image (offline) and return its name."""
    base = ensure_base()
    name = tag or f"{IMAGE}:{_digest()}"
    with tempfile.TemporaryDirectory(prefix="mirrord-agent-image-") as tmp:
        context = Path(tmp)
        _wheels(context)
        _run(
            [
                *podman(),
                "build",
                "--network=none",
                *ulimit_args(),
                "--build-arg",
                f"BASE={base}",
                "-f",
                str(REPO / "Dockerfile.agent"),
                "-t",
                name,
                str(context),
            ],
            "podman build -f Dockerfile.agent",
            timeout=900,
        )
    return name


def ensure_image() -> str:
    """The image of this tree, built if it was not yet."""
    name = f"{IMAGE}:{_digest()}"
    return name if image_exists(name) else build(name)
