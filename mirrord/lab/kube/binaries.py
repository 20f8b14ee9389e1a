"""The control plane's binaries: where they are cached and how they are built from source.

Standard library only: ``scripts/kube-binaries`` loads this file by path on a fresh machine,
before the project (or any of its dependencies) is installed.

Layout (``MIRRORD_KUBE_CACHE`` or ``~/.cache/mirrord-kube``)::

    <key>/bin/{kube-apiserver,kube-controller-manager,etcd,kwok}
    <key>/kwok/stage/...          kwok's stage files (its module's kustomize/stage)
    <key>/kwok/crd/...            kwok's CRDs (its module's kustomize/crd/bases)
    <key>/.complete               written last: everything above is there
    go/{path,mod,build}           GOPATH, GOMODCACHE, GOCACHE of the builds (CI may cache them)
    work/                         the wrapper modules the builds run in
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.37.2"
STAGING_VERSION = "v0.37.2"  # k8s.io/<staging module> releases that go with v1.37.2
ETCD_VERSION = "v3.6.8"  # Debian's 3.4 lacks RequestWatchProgress, which kwok's watches need
KWOK_VERSION = "v0.8.0"
MIN_GO = (1, 26)  # k8s.io/kubernetes v1.37's go.mod says `go 1.26.0`
# Bump when the way the binaries are built changes, so old caches are not reused.
BUILD_REVISION = 1

BINARIES = ("kube-apiserver", "kube-controller-manager", "etcd", "kwok")
BUILD_SCRIPT = "scripts/kube-binaries"


def version_key() -> str:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return (
        f"kube-{KUBERNETES_VERSION}_etcd-{ETCD_VERSION}_kwok-{KWOK_VERSION}"
        f"_linux-{arch}_r{BUILD_REVISION}"
    )


def cache_root() -> Path:
    env = os.environ.get("MIRRORD_KUBE_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mirrord-kube"


class BinariesMissing(RuntimeError):
    """The cache is not built; the message says how to build it."""


@dataclass(frozen=True)
class Binaries:
    """Paths of one complete, built cache entry."""

    root: Path

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def kube_apiserver(self) -> Path:
        return self.bin_dir / "kube-apiserver"

    @property
    def kube_controller_manager(self) -> Path:
        return self.bin_dir / "kube-controller-manager"

    @property
    def etcd(self) -> Path:
        return self.bin_dir / "etcd"

    @property
    def kwok(self) -> Path:
        return self.bin_dir / "kwok"

    @property
    def kwok_stage_dir(self) -> Path:
        return self.root / "kwok" / "stage"

    @property
    def kwok_crd_dir(self) -> Path:
        return self.root / "kwok" / "crd"

    @property
    def complete_marker(self) -> Path:
        return self.root / ".complete"


def entry() -> Binaries:
    """The cache entry for the pinned versions (it may not be built yet)."""
    return Binaries(cache_root() / version_key())


def find() -> Binaries:
    """The built binaries, or :class:`BinariesMissing` naming the script that builds them."""
    b = entry()
    if not b.complete_marker.exists():
        raise BinariesMissing(
            f"the Kubernetes lab binaries are not built ({b.root} has no .complete); "
            f"run {BUILD_SCRIPT} (cold: about 10 minutes and 6 GB under {cache_root()})"
        )
    return b


# --------------------------------------------------------------------------- building


def _log(msg: str) -> None:
    print(f"kube-binaries: {msg}", file=sys.stderr, flush=True)


class BuildError(RuntimeError):
    pass


@dataclass
class _Builder:
    target: Binaries
    root: Path  # cache_root()

    @property
    def work(self) -> Path:
        return self.root / "work"

    def env(self, goflags: str) -> dict[str, str]:
        go = self.root / "go"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GO") and k != "CGO_ENABLED"}
        env.update(
            GOPATH=str(go / "path"),
            GOMODCACHE=str(go / "mod"),
            GOCACHE=str(go / "build"),
            GOTOOLCHAIN="local",  # never fetch another toolchain behind our back
            GOWORK="off",
            GO111MODULE="on",
            CGO_ENABLED="0",  # static binaries, and no C compiler needed
            GOFLAGS=goflags,
        )
        for key in ("GOPROXY", "GONOSUMDB", "GOPRIVATE", "GONOPROXY", "GOSUMDB", "GOINSECURE"):
            if key in os.environ:  # the machine's proxy settings still apply
                env[key] = os.environ[key]
        return env

    def go(
        self, args: list[str], cwd: Path, goflags: str = "-mod=mod -buildvcs=false"
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            ["go", *args], cwd=cwd, env=self.env(goflags), capture_output=True, text=True
        )
        if r.returncode != 0:
            tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-30:])
            raise BuildError(f"`go {' '.join(args)}` failed in {cwd}:\n{tail}")
        return r

    def download(self, module: str) -> dict[str, str]:
        r = self.go(["mod", "download", "-json", module], cwd=self.root, goflags="-mod=mod")
        info: dict[str, str] = json.loads(r.stdout)
        if info.get("Error"):
            raise BuildError(f"go mod download {module}: {info['Error']}")
        return info

    def wrapper(self, name: str, gomod: str) -> Path:
        d = self.work / name
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "go.mod").exists() or (d / "go.mod").read_text() != gomod:
            (d / "go.mod").write_text(gomod)
            (d / "go.sum").unlink(missing_ok=True)
        return d

    def kubernetes_wrapper(self) -> Path:
        info = self.download(f"k8s.io/kubernetes@{KUBERNETES_VERSION}")
        r = self.go(["mod", "edit", "-json", info["GoMod"]], cwd=self.root)
        mod = json.loads(r.stdout)
        go_line = mod["Go"]
        staging = sorted(
            rep["Old"]["Path"]
            for rep in mod.get("Replace") or []
            if rep["New"]["Path"].startswith("./staging/")
        )
        if not staging:
            raise BuildError("k8s.io/kubernetes' go.mod has no ./staging replaces")
        # `go install k8s.io/kubernetes/...@v` refuses modules with replace directives: a wrapper
        # module requires kubernetes and points each staging module at its published release.
        lines = [
            "module mirrord.local/kube-build",
            "",
            f"go {go_line}",
            "",
            f"require k8s.io/kubernetes {KUBERNETES_VERSION}",
            "",
            "replace (",
            *(f"\t{m} => {m} {STAGING_VERSION}" for m in staging),
            ")",
            "",
        ]
        _log(f"kubernetes wrapper module: {len(staging)} staging replaces")
        return self.wrapper("kubernetes", "\n".join(lines))

    def etcd_wrapper(self) -> Path:
        # go install refuses etcd's server module for its replace directives, too.
        gomod = (
            "module mirrord.local/etcd-build\n\ngo 1.24\n\n"
            f"require go.etcd.io/etcd/server/v3 {ETCD_VERSION}\n"
        )
        return self.wrapper("etcd", gomod)

    def build(self, name: str, cwd: Path, package: str, ldflags: str) -> None:
        out = self.target.bin_dir / name
        if out.exists():
            _log(f"{name}: already built")
            return
        tmp = out.with_name(f".{name}.tmp")
        _log(f"{name}: go build {package} ...")
        t0 = time.monotonic()
        args = ["build", "-trimpath", "-tags", "selinux,notest"]
        self.go([*args, "-ldflags", ldflags, "-o", str(tmp), package], cwd=cwd)
        tmp.rename(out)
        _log(f"{name}: built in {time.monotonic() - t0:.0f} s")

    def kube_ldflags(self) -> str:
        m = re.fullmatch(r"v(\d+)\.(\d+)\.\d+", KUBERNETES_VERSION)
        assert m, KUBERNETES_VERSION
        values = {
            "gitVersion": KUBERNETES_VERSION,
            "gitMajor": m[1],
            "gitMinor": m[2],
            "gitTreeState": "clean",
            "buildDate": "1970-01-01T00:00:00Z",
        }
        # Without these the binaries report v0.0.0 (and clients warn about the skew).
        flags = ["-s", "-w"]
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            flags += [f"-X {pkg}.{k}={v}" for k, v in values.items()]
        return " ".join(flags)

    def kwok(self) -> None:
        out = self.target.bin_dir / "kwok"
        if out.exists():
            _log("kwok: already built")
            return
        _log(f"kwok: go install sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION} ...")
        t0 = time.monotonic()
        gobin = self.work / "kwok-bin"
        gobin.mkdir(parents=True, exist_ok=True)
        env_flags = "-buildvcs=false"
        ldflags = "-s -w"  # its version is in the source already
        r = subprocess.run(
            [
                "go",
                "install",
                "-trimpath",
                "-ldflags",
                ldflags,
                f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}",
            ],
            cwd=self.root,
            env={**self.env(env_flags), "GOBIN": str(gobin)},
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            tail = "\n".join(r.stderr.strip().splitlines()[-30:])
            raise BuildError(f"go install kwok failed:\n{tail}")
        (gobin / "kwok").rename(out)
        _log(f"kwok: built in {time.monotonic() - t0:.0f} s")

    def kwok_files(self) -> None:
        src = Path(self.download(f"sigs.k8s.io/kwok@{KWOK_VERSION}")["Dir"])
        for sub, dest in (
            ("kustomize/stage", self.target.kwok_stage_dir),
            ("kustomize/crd/bases", self.target.kwok_crd_dir),
        ):
            if dest.exists():
                shutil.rmtree(dest)
            _copy_tree(src / sub, dest)
        _log(f"kwok stages and CRDs copied to {self.target.root / 'kwok'}")

    def run(self) -> None:
        self.target.bin_dir.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        kube = self.kubernetes_wrapper()
        ld = self.kube_ldflags()
        for name in ("kube-apiserver", "kube-controller-manager"):
            self.build(name, kube, f"k8s.io/kubernetes/cmd/{name}", ld)
        self.build("etcd", self.etcd_wrapper(), "go.etcd.io/etcd/server/v3", "-s -w")
        self.kwok()
        self.kwok_files()
        for name in BINARIES:
            r = subprocess.run(
                [str(self.target.bin_dir / name), "--version"], capture_output=True, text=True
            )
            first = (r.stdout or r.stderr).strip().splitlines()[:1]
            _log(f"{name}: {first[0] if first else '(no version output)'}")
        self.target.complete_marker.write_text(version_key() + "\n")


def _copy_tree(src: Path, dest: Path) -> None:
    # Not shutil.copytree: the module cache is read-only and copystat would keep it so.
    for dirpath, _dirs, files in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(Path(dirpath) / f, dest / rel / f)


def _check_go() -> None:
    if shutil.which("go") is None:
        raise BuildError(f"`go` is not on PATH (Go >= {MIN_GO[0]}.{MIN_GO[1]} is needed)")
    out = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True).stdout.strip()
    m = re.match(r"go(\d+)\.(\d+)", out)
    if not m or (int(m[1]), int(m[2])) < MIN_GO:
        raise BuildError(f"Go >= {MIN_GO[0]}.{MIN_GO[1]} is needed, found {out or 'nothing'}")


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    # Two builds at once would double the CPU and memory for nothing: the second one waits.
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure(clean_go_caches: bool = False) -> Binaries:
    """Build whatever is missing (nothing when the cache is complete) and return the paths."""
    target = entry()
    if target.complete_marker.exists():
        _log(f"up to date: {target.root}")
        return target
    t0 = time.monotonic()
    root = cache_root()
    with _lock(root):
        if not target.complete_marker.exists():  # another process may have built it meanwhile
            _check_go()
            _log(f"building into {target.root} (cold: ~10 min on 2 cores)")
            _Builder(target, root).run()
            _log(f"complete in {time.monotonic() - t0:.0f} s")
    if clean_go_caches:
        clean(keep_binaries=True)
    return target


def clean(keep_binaries: bool) -> None:
    """Remove the Go caches and wrapper modules (and with them the binaries, unless kept)."""
    root = cache_root()
    go = root / "go"
    if (go / "mod").exists():
        # the module cache is read-only; `go clean -modcache` knows how to remove it
        subprocess.run(
            ["go", "clean", "-modcache"],
            env={**os.environ, "GOMODCACHE": str(go / "mod"), "GOTOOLCHAIN": "local"},
            check=False,
        )
    for d in (go, root / "work"):
        shutil.rmtree(d, ignore_errors=True)
    if not keep_binaries:
        shutil.rmtree(entry().root, ignore_errors=True)
    _log(f"cleaned {root}" + (" (binaries kept)" if keep_binaries else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="kube-binaries",
        description="Build the Kubernetes lab's binaries from source into the cache (idempotent).",
    )
    p.add_argument("--print-dir", action="store_true", help="print the cache entry and exit")
    p.add_argument(
        "--clean-go-caches",
        action="store_true",
        help="after building, remove the Go module and build caches (~6 GB)",
    )
    p.add_argument("--clean", action="store_true", help="remove everything this script made")
    args = p.parse_args(argv)
    if args.print_dir:
        print(entry().root)
        return 0
    if args.clean:
        clean(keep_binaries=False)
        return 0
    try:
        b = ensure(clean_go_caches=args.clean_go_caches)
    except BuildError as exc:
        _log(f"error: {exc}")
        return 1
    print(b.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
