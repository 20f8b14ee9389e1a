"""The lab cluster's PKI, made with openssl: a CA, serving and client certificates, the
service-account key pair, and kubeconfig files."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CLUSTER_NAME = "mirrord-kube-lab"
DAYS = 30  # a lab lives for minutes; a short validity keeps a leaked file harmless


class PkiError(RuntimeError):
    pass


def _openssl(args: Sequence[str], cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise PkiError(f"openssl {args[0]} failed: {r.stderr.strip()[-500:]}")


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Every file the control plane needs, all under ``dir``."""

    dir: Path
    ca: CertPair
    apiserver: CertPair  # serving
    admin: CertPair  # client, O=system:masters
    kubelet_client: CertPair  # the apiserver's client certificate towards kwok ("kubelet")
    kwok: CertPair  # kwok's serving certificate (its "kubelet" API)
    sa_key: Path  # RSA private key: signs service-account tokens
    sa_pub: Path

    def kubeconfig(self, path: Path, server: str, user: CertPair | None = None) -> Path:
        """Write a kubeconfig for ``server`` with ``user``'s (default: admin) certificate embedded."""
        user = user or self.admin
        write_kubeconfig(path, server, self.ca.cert, cert=user.cert, key=user.key, user="admin")
        return path


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path,
    server: str,
    ca_cert: Path,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    token: str | None = None,
    user: str = "admin",
    namespace: str = "default",
) -> Path:
    """A self-contained kubeconfig (everything embedded) for a client cert or a bearer token."""
    creds: dict[str, Any] = {}
    if cert and key:
        creds = {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}
    if token:
        creds["token"] = token
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)},
            }
        ],
        "users": [{"name": user, "user": creds}],
        "contexts": [
            {
                "name": f"{user}@{CLUSTER_NAME}",
                "context": {"cluster": CLUSTER_NAME, "user": user, "namespace": namespace},
            }
        ],
        "current-context": f"{user}@{CLUSTER_NAME}",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def _ec_key_args() -> list[str]:
    # P-256: generated in a millisecond, where RSA-2048 takes ~50 ms per key
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _make_ca(d: Path) -> CertPair:
    pair = CertPair(d / "ca.crt", d / "ca.key")
    conf = d / "ca.cnf"
    conf.write_text(
        "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ext\n"
        f"[dn]\nCN = {CLUSTER_NAME}-ca\n"
        "[ext]\nbasicConstraints = critical, CA:TRUE\n"
        "keyUsage = critical, keyCertSign, cRLSign, digitalSignature\n"
        "subjectKeyIdentifier = hash\n"
    )
    _openssl(
        ["req", "-x509", "-config", conf.name, *_ec_key_args(), "-days", str(DAYS)]
        + ["-keyout", pair.key.name, "-out", pair.cert.name],
        cwd=d,
    )
    return pair


def _make_leaf(
    d: Path,
    ca: CertPair,
    name: str,
    cn: str,
    *,
    org: str | None = None,
    server: bool = False,
    client: bool = False,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
) -> CertPair:
    pair = CertPair(d / f"{name}.crt", d / f"{name}.key")
    usages = [u for u, on in (("serverAuth", server), ("clientAuth", client)) if on]
    ext = [
        "basicConstraints = critical, CA:FALSE",
        "keyUsage = critical, digitalSignature",  # EC keys sign; they encipher nothing
        f"extendedKeyUsage = {', '.join(usages)}",
        "authorityKeyIdentifier = keyid",
    ]
    sans = [f"DNS:{n}" for n in dns] + [f"IP:{ip}" for ip in ips]
    if sans:
        ext.append(f"subjectAltName = {', '.join(sans)}")
    dn = (f"O = {org}\n" if org else "") + f"CN = {cn}\n"
    conf = d / f"{name}.cnf"
    conf.write_text(
        "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ext\n"
        f"[dn]\n{dn}[ext]\n" + "\n".join(ext) + "\n"
    )
    # one call: `req -x509 -CA` (OpenSSL >= 3.0) makes the key and the signed certificate
    _openssl(
        ["req", "-x509", "-config", conf.name, *_ec_key_args(), "-days", str(DAYS)]
        + ["-CA", ca.cert.name, "-CAkey", ca.key.name]
        + ["-keyout", pair.key.name, "-out", pair.cert.name],
        cwd=d,
    )
    return pair


def create_pki(d: Path, *, service_ip: str, node_ip: str = "127.0.0.1") -> Pki:
    """Make every certificate and key in ``d`` (0.1-0.4 s idle; seconds on a loaded machine)."""
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    ca = _make_ca(d)
    sa_key, sa_pub = d / "sa.key", d / "sa.pub"

    def sa_keys() -> None:
        # RSA, as kubeadm makes it; the slowest step (0.05-0.8 s), so it runs beside the certs
        _openssl(
            ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
            + ["-out", sa_key.name],
            cwd=d,
        )
        _openssl(["pkey", "-in", sa_key.name, "-pubout", "-out", sa_pub.name], cwd=d)

    kube_dns = ("kubernetes", "kubernetes.default", "kubernetes.default.svc")
    with ThreadPoolExecutor(max_workers=5) as pool:
        sa = pool.submit(sa_keys)
        apiserver = pool.submit(
            _make_leaf,
            d,
            ca,
            "apiserver",
            "kube-apiserver",
            server=True,
            dns=("localhost", *kube_dns, "kubernetes.default.svc.cluster.local"),
            ips=("127.0.0.1", service_ip),
        )
        admin = pool.submit(
            _make_leaf, d, ca, "admin", "kubernetes-admin", org="system:masters", client=True
        )
        kubelet_client = pool.submit(
            _make_leaf,
            d,
            ca,
            "kubelet-client",
            "kube-apiserver-kubelet-client",
            org="system:masters",
            client=True,
        )
        kwok = pool.submit(
            _make_leaf, d, ca, "kwok", "kwok", server=True, dns=("localhost",), ips=(node_ip,)
        )
        sa.result()
        pki = Pki(
            d,
            ca,
            apiserver.result(),
            admin.result(),
            kubelet_client.result(),
            kwok.result(),
            sa_key,
            sa_pub,
        )
    for p in d.glob("*.key"):
        p.chmod(0o600)
    return pki
