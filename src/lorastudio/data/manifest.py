"""The dataset dir contract: `manifest.jsonl`, `rejected.jsonl`, `dataset.json`, sidecars.

Every stage reads and writes datasets through this module only. Records are plain dicts
validated by `Record` on read, so other tools can open the files, and later stages may add
fields (`role`, `caption_history`, ...) without breaking earlier readers.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MANIFEST = "manifest.jsonl"
REJECTED = "rejected.jsonl"
DATASET_JSON = "dataset.json"
IMAGES_DIR = "images"
REPORT = "report.html"

SLOT_NAMES = ("trigger", "subject", "shot", "objective", "style")
# A record flagged so is kept in the manifest (and its files on disk) but never trained on.
REJECTED_FLAG = "rejected"


class ManifestError(ValueError):
    """The dataset dir is missing or holds a malformed file; the message names it."""


class Record(BaseModel):
    """One accepted image. Fields beyond these are kept as they are (extra="allow")."""

    model_config = ConfigDict(extra="allow")

    id: str
    file: str = Field(description="relative path of the processed image inside the dataset dir")
    source: str = Field(description="original path as given to prepare")
    sha256: str = Field(description="sha256 of the original bytes")
    orig_width: int
    orig_height: int
    width: int
    height: int
    crop: list[int] = Field(description="[x0, y0, x1, y1] in original (orientation-fixed) pixels")
    repeats: int = 1
    role: str = "train"
    flags: list[str] = Field(default_factory=list)
    caption: dict[str, Any] | None = None
    caption_text: str | None = None
    caption_source: dict[str, Any] | None = None


def atomic_write_text(path: Path, text: str, *, fsync: bool = True) -> None:
    """Write `text` to `path` through a temp file (+ fsync) + rename, so readers never see half.

    `fsync=False` is for files that can be regenerated from the manifest (sidecars): the
    rename still keeps them whole, and skipping the flush saves ~1 ms per file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read one JSON object per line (blank lines skipped); errors name the file and line."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ManifestError(f"{path}:{lineno}: expected a JSON object")
            rows.append(row)
    return rows


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Atomically write one JSON object per line."""
    text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n" for row in rows)
    atomic_write_text(path, text)


def read_manifest(dataset_dir: Path | str) -> list[dict[str, Any]]:
    """Read and validate `manifest.jsonl`; raises ManifestError naming the file and line."""
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{dataset_dir} is not a dataset dir: {MANIFEST} not found (run `lorastudio prepare` first)")
    rows = read_jsonl(path)
    for lineno, row in enumerate(rows, 1):
        try:
            Record.model_validate(row)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise ManifestError(f"{path}: record {lineno} ({row.get('id', '?')}): {key}: {first['msg']}") from None
    return rows


def write_manifest(dataset_dir: Path | str, records: Iterable[dict[str, Any]]) -> None:
    """Atomically replace `manifest.jsonl`."""
    write_jsonl(Path(dataset_dir) / MANIFEST, records)


def read_rejected(dataset_dir: Path | str) -> list[dict[str, Any]]:
    """Read `rejected.jsonl` (empty list when absent)."""
    path = Path(dataset_dir) / REJECTED
    return read_jsonl(path) if path.is_file() else []


def read_dataset_json(dataset_dir: Path | str) -> dict[str, Any]:
    """Read `dataset.json` (dataset-level facts)."""
    path = Path(dataset_dir) / DATASET_JSON
    if not path.is_file():
        raise ManifestError(f"{path} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc.msg})") from None


def write_dataset_json(dataset_dir: Path | str, facts: dict[str, Any]) -> None:
    """Atomically write `dataset.json`."""
    atomic_write_text(Path(dataset_dir) / DATASET_JSON, json.dumps(facts, indent=2, ensure_ascii=False) + "\n")


def sidecar_path(dataset_dir: Path | str, record: dict[str, Any]) -> Path:
    """`images/<id>.txt` beside the processed image (the kohya / ai-toolkit convention)."""
    return (Path(dataset_dir) / record["file"]).with_suffix(".txt")


def write_sidecar(dataset_dir: Path | str, record: dict[str, Any]) -> None:
    """Write the composed caption next to the image, or remove a stale one if there is none."""
    path = sidecar_path(dataset_dir, record)
    text = record.get("caption_text")
    if text:
        # Sidecars are derived from the manifest, which is fsynced; they need no flush of their own.
        atomic_write_text(path, text.strip() + "\n", fsync=False)
    else:
        path.unlink(missing_ok=True)
