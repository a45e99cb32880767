"""Atomic checkpoints: write to a temp dir, fsync, COMPLETE.json last, rename into place.

A checkpoint dir is valid only if its COMPLETE.json exists and every file it lists has the
recorded sha256. Resume picks the newest valid one and warns about every one it skips.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorastudio.data.hashing import file_sha256

COMPLETE = "COMPLETE.json"
CHECKPOINTS = "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the path."""


class DiskFullError(CheckpointError):
    """Not enough free space to write a checkpoint; the previous one is intact."""


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_free_space(target_parent: Path, needed_bytes: int) -> None:
    """Raise DiskFullError when the disk holding `target_parent` has less than `needed_bytes` free."""
    target_parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target_parent).free
    if free < needed_bytes:
        raise DiskFullError(
            f"not enough free disk space in {target_parent}: {free / 1e6:.1f} MB free, {needed_bytes / 1e6:.1f} MB needed "
            "for the next checkpoint; free some space (or lower save.keep_last) and resume with --resume auto"
        )


def write_atomic_dir(final: Path, fill: Callable[[Path], None], *, info: dict[str, Any], needed_bytes: int) -> Path:
    """Create directory `final` atomically: `fill(tmp)` writes the files, then COMPLETE.json.

    If `final` exists it is replaced only after the new one is complete.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(final.parent, needed_bytes)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        fill(tmp)
        files = {p.relative_to(tmp).as_posix(): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        complete = {**info, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files}
        (tmp / COMPLETE).write_text(json.dumps(complete, indent=1), encoding="utf-8")
        _fsync_tree(tmp)
        if final.exists():
            old = final.with_name(f".old-{final.name}-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == 28:  # ENOSPC
            raise DiskFullError(f"disk full while writing {final}; the previous checkpoint is intact") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def verify(ckpt: Path) -> str | None:
    """None when `ckpt` is complete and intact, else the reason it is not."""
    marker = ckpt / COMPLETE
    if not marker.is_file():
        return "no COMPLETE.json (interrupted while writing)"
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (json.JSONDecodeError, KeyError):
        return "COMPLETE.json is damaged"
    for rel, digest in files.items():
        path = ckpt / rel
        if not path.is_file():
            return f"{rel} is missing"
        if file_sha256(path) != digest:
            return f"{rel} does not match its sha256"
    return None


def step_of(path: Path) -> int:
    """`checkpoints/step_120` -> 120 (-1 for other names)."""
    name = path.name
    return int(name[5:]) if name.startswith("step_") and name[5:].isdigit() else -1


def list_checkpoints(run_dir: Path) -> list[Path]:
    """`checkpoints/step_N` dirs, oldest first."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and step_of(p) >= 0), key=step_of)


def latest_valid(run_dir: Path, warn: Callable[[str], None]) -> Path | None:
    """The newest checkpoint that verifies; each newer broken one is reported through `warn`."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        problem = verify(ckpt)
        if problem is None:
            return ckpt
        warn(f"skipping checkpoint {ckpt}: {problem}")
    return None


def prune(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints (and leftover temp dirs)."""
    root = run_dir / CHECKPOINTS
    removed = []
    for ckpt in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(ckpt, ignore_errors=True)
        removed.append(ckpt)
    if root.is_dir():
        for leftover in root.glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    return removed


def dir_size(path: Path) -> int:
    """Total bytes of the files under `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0
