"""Content-addressed files under the data dir: outputs, stored inputs, adapters, datasets.

A file is named by the SHA-256 of its bytes (`outputs/ab/cd/<sha>.png`), so clients never
name a path: ids are checked against `^[0-9a-f]{64}$`, the resolved path must stay under
the root, and the final open refuses a symlink (`O_NOFOLLOW`).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

SHA_RE = re.compile(r"^[0-9a-f]{64}$")
KINDS = ("outputs", "inputs", "loras")


class StorageFull(OSError):
    """The disk refused a write (ENOSPC); the job fails with `storage_full`."""


def content_path(data_dir: Path, kind: str, sha: str, ext: str) -> Path:
    """Where a content-addressed file lives (no check that it exists)."""
    if kind not in KINDS or not SHA_RE.match(sha):
        raise ValueError("not a content id")
    return Path(data_dir) / kind / sha[:2] / sha[2:4] / f"{sha}.{ext}"


def store_bytes(data_dir: Path, kind: str, data: bytes, ext: str) -> str:
    """Write `data` once under its SHA-256 (atomically: temp file, then rename); returns the id."""
    sha = hashlib.sha256(data).hexdigest()
    path = content_path(data_dir, kind, sha, ext)
    if path.is_file():
        return sha
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == 28:  # ENOSPC
            raise StorageFull(28, "no space left on the data volume") from None
        raise
    return sha


def read_content(data_dir: Path, kind: str, sha: str, ext: str) -> bytes | None:
    """The bytes of a stored file, or None when the id is malformed, missing or not a plain file."""
    if not SHA_RE.match(sha or ""):
        return None
    root = (Path(data_dir) / kind).resolve()
    path = content_path(data_dir, kind, sha, ext)
    try:
        if root not in path.resolve().parents:
            return None
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read()
