"""Files that only the staging service sees (a tmpfs in its own mount namespace).

The staging service is started with `ip netns exec`, which gives it a private mount
namespace whose mounts do not propagate back to the host. Before it serves, it mounts a
tmpfs over MOUNT_POINT there and writes the files below, so the target has
`/srv/app/...` while the host's `/srv` stays as it is.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import sqlite3
from pathlib import Path

from mirrord.system.libc import check, libc

MOUNT_POINT = "/srv"
ROOT = "/srv/app"
BIG_FILE = "data/big.bin"
BIG_SIZE = 20 * 1024 * 1024
#: The big file repeats a random block of a prime length, so that a chunk read at the
#: wrong offset (chunks are powers of two) never looks right.
_BLOCK = 1_000_003

SETTINGS_YAML = b"""\
database:
  host: db.staging.svc
  port: 5432
feature_flags:
  new_ui: true
"""

APP_INI = b"""\
[server]
port = 8080
name = staging-service

[database]
url = postgres://db.staging.svc:5432/app
"""

SETTINGS = {"environment": "staging", "replicas": 3, "features": ["a", "b"]}

#: Small files under ROOT: relative path -> content.
FILES: dict[str, bytes] = {
    "config/settings.yaml": SETTINGS_YAML,
    "config/app.ini": APP_INI,
    "config/settings.json": json.dumps(SETTINGS).encode(),
    "config/nested/deep/secret.txt": b"deep-secret\n",
    "secrets/token": b"staging-token\n",
}
#: Symlinks under ROOT: relative path -> link target.
SYMLINKS: dict[str, str] = {
    "config/current.yaml": "settings.yaml",
    "config/dangling": "does-not-exist",
}
SQLITE_DB = "data/app.sqlite3"
SQLITE_ROWS = [(1, "ada"), (2, "grace"), (3, "linus")]


@functools.lru_cache(maxsize=1)
def big_file_sha256() -> str:
    digest = hashlib.sha256()
    for chunk in _big_file_chunks():
        digest.update(chunk)
    return digest.hexdigest()


def _big_file_chunks() -> list[bytes]:
    block = random.Random(2024).randbytes(_BLOCK)
    chunks = [block] * (BIG_SIZE // _BLOCK)
    chunks.append(block[: BIG_SIZE % _BLOCK])
    return chunks


def _mount_tmpfs(target: str) -> None:
    ms_nosuid, ms_nodev = 2, 4
    options = b"size=64m,mode=755"
    result = libc.mount(b"tmpfs", target.encode(), b"tmpfs", ms_nosuid | ms_nodev, options)
    check(result, f"mount tmpfs on {target}")


def populate(mount_point: str = MOUNT_POINT) -> None:
    """Mount the tmpfs (in this process's mount namespace) and write every file."""
    os.makedirs(mount_point, exist_ok=True)
    _mount_tmpfs(mount_point)
    root = Path(mount_point) / Path(ROOT).relative_to(MOUNT_POINT)
    for rel, content in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (root / "secrets/token").chmod(0o600)
    for rel, target in SYMLINKS.items():
        (root / rel).symlink_to(target)
    (root / "data").mkdir(exist_ok=True)
    with open(root / BIG_FILE, "wb") as fh:
        for chunk in _big_file_chunks():
            fh.write(chunk)
    db = sqlite3.connect(root / SQLITE_DB)
    try:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        db.executemany("INSERT INTO users VALUES (?, ?)", SQLITE_ROWS)
        db.commit()
    finally:
        db.close()
