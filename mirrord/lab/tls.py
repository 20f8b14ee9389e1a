"""Test CA and server certificate for the lab's TLS backend (made with ``trustme``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

# Names the backend certificate is valid for (all resolve to the backend inside staging).
TLS_NAMES = ("tls.staging.svc", "backend.staging.svc", "db.staging.svc")


@dataclass(frozen=True)
class CertFiles:
    ca_pem: Path  # trust this to verify the backend
    cert_pem: Path  # server certificate chain
    key_pem: Path  # server private key


_cache: tuple[bytes, bytes, bytes] | None = None
_cache_lock = threading.Lock()


def _make_pems() -> tuple[bytes, bytes, bytes]:
    # Generating keys (and importing `cryptography`) costs ~0.2 s; one CA per
    # process is plenty, since every lab uses the same service names.
    global _cache
    with _cache_lock:
        if _cache is None:
            import trustme

            ca = trustme.CA(organization_name="mirrord lab test CA")
            cert = ca.issue_cert(*TLS_NAMES)
            chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
            _cache = (ca.cert_pem.bytes(), chain, cert.private_key_pem.bytes())
        return _cache


def write_certs(directory: Path) -> CertFiles:
    """Write ca.pem, server.pem and server.key into ``directory``."""
    ca, chain, key = _make_pems()
    files = CertFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_pem.write_bytes(ca)
    files.cert_pem.write_bytes(chain)
    files.key_pem.write_bytes(key)
    files.key_pem.chmod(0o600)
    return files
