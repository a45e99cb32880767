"""The `manual` backend: captions you already have, from a table or from sidecar files.

Sources (`--from PATH`, or `--model PATH`):
- a `.csv` file with a header holding `file` and `caption` columns;
- a `.jsonl` file with one {"file": ..., "caption": ...} object per line;
- a folder of sidecars (`<name>.txt` or `<name>.caption`, kohya style);
- nothing: the sidecar next to each record's original `source` image, then the dataset's own
  `images/<id>.txt`.
A table row's `file` may name the record's processed file, its original source path, either
one's base name or stem, or the record id. Paths in a table are only compared, never opened.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lorastudio.captions.backends import BackendError, BackendOutput
from lorastudio.data.manifest import ManifestError, read_jsonl

SIDECAR_SUFFIXES = (".txt", ".caption")
MAX_TABLE_BYTES = 200 * 1024 * 1024


def _read_csv(path: Path) -> dict[str, str]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        if "file" not in fields or "caption" not in fields:
            raise BackendError(f"{path}: needs a header with 'file' and 'caption' columns (found: {', '.join(fields) or 'none'})")
        reader.fieldnames = fields
        table = {}
        for lineno, row in enumerate(reader, 2):
            if not (row.get("file") or "").strip():
                raise BackendError(f"{path}:{lineno}: empty 'file' value")
            table[row["file"].strip()] = (row.get("caption") or "").strip()
        return table


def _read_jsonl(path: Path) -> dict[str, str]:
    try:
        rows = read_jsonl(path)
    except ManifestError as exc:
        raise BackendError(str(exc)) from None
    table = {}
    for n, row in enumerate(rows, 1):
        if not isinstance(row.get("file"), str) or not isinstance(row.get("caption"), str):
            raise BackendError(f"{path}: object {n}: expected string 'file' and 'caption'")
        table[row["file"].strip()] = row["caption"].strip()
    return table


def _keys(record: dict[str, Any]) -> list[str]:
    """Every name a table row may use for this record, most specific first."""
    keys = [record["file"], record.get("source") or "", record["id"]]
    for value in (record["file"], record.get("source") or ""):
        if value:
            keys += [Path(value).name, Path(value).stem]
    return [k for k in keys if k]


def _read_sidecar(image_path: Path) -> str | None:
    for suffix in SIDECAR_SUFFIXES:
        candidate = image_path.with_suffix(suffix)
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8", errors="replace").strip()
    return None


class ManualBackend:
    """Looks captions up per record instead of looking at pixels."""

    name = "manual"

    def __init__(self, source: Path | None) -> None:
        self.source = source
        self.table: dict[str, str] | None = None
        if source is None or source.is_dir():
            return
        if not source.is_file():
            raise BackendError(f"manual captions source {source} not found")
        if source.stat().st_size > MAX_TABLE_BYTES:
            raise BackendError(f"{source} is larger than {MAX_TABLE_BYTES} bytes")
        if source.suffix.lower() == ".csv":
            self.table = _read_csv(source)
        elif source.suffix.lower() in (".jsonl", ".ndjson"):
            self.table = _read_jsonl(source)
        else:
            raise BackendError(f"{source}: manual captions must be a .csv or .jsonl file, or a folder of sidecars")

    def caption_records(self, dataset_dir: Path, records: list[dict[str, Any]]) -> list[BackendOutput]:
        """One output per record; empty output when no caption exists for it."""
        return [BackendOutput(text=self._lookup(Path(dataset_dir), r)) for r in records]

    def _lookup(self, dataset_dir: Path, record: dict[str, Any]) -> str | None:
        if self.table is not None:
            return next((self.table[k] for k in _keys(record) if k in self.table), None)
        if self.source is not None:
            names = [Path(k).name for k in _keys(record)]
            # Only names directly inside the given folder: no path from a record can escape it.
            return next((t for n in names if (t := _read_sidecar(self.source / Path(n).name)) is not None), None)
        if record.get("source"):
            text = _read_sidecar(Path(record["source"]))
            if text is not None:
                return text
        return _read_sidecar(dataset_dir / record["file"])

    def caption_batch(self, images: list) -> list[BackendOutput]:
        """Pixels carry no file name, so `manual` works through `caption_records` only."""
        raise BackendError("the manual backend captions records, not images; use caption_records")

    def provenance(self) -> dict:
        """Where the captions came from."""
        return {"backend": self.name, "model": str(self.source) if self.source else "sidecars",
                "revision": None, "params": {}}


def create(*, model: str | None = None, revision: str | None = None, device: str = "cpu", dtype: str = "float32",
           vocab: Any = None, options: dict | None = None) -> ManualBackend:
    """Build the manual backend; `options['from']` or `model` names the CSV / JSONL / folder."""
    src = (options or {}).get("from") or model
    return ManualBackend(Path(src) if src else None)
