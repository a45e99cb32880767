"""Studio datasets on disk: upload + prepare, contained paths, thumbnails, caption writes with versions.

A studio dataset lives at `<data>/studio/datasets/<id>/`: `raw/` holds the uploaded files as
received (never modified), `dataset/` is an ordinary prepared dataset dir (the stage
contract), `audits/` keeps every audit's JSON. Clients name datasets and images by id only;
every file path is resolved (symlinks included) and must stay under its root.

Caption writes go through the captions history (`set_caption`, one op id per write), so
`lorastudio caption DIR --undo` and the studio's Undo are the same operation. A caption's
version is a hash of its stored state: a save carrying an older version is a conflict.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from lorastudio.captions.history import caption_of, new_source, set_caption, undo_last
from lorastudio.captions.slots import Caption, compose
from lorastudio.data.manifest import read_manifest, read_rejected, write_manifest, write_sidecar

DATASET_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
THUMB_SIDE = 256
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


class StudioError(Exception):
    """A request the studio refuses; `status` and `code` become the problem+json answer."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.extra = status, code, extra


def root(data_dir: Path) -> Path:
    """Where studio datasets live."""
    path = Path(data_dir) / "studio" / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def contained(base: Path, rel: str) -> Path:
    """`base/rel` resolved, refusing anything that ends up outside `base` (symlinks included)."""
    base = base.resolve()
    if not rel or "\x00" in rel or os.path.isabs(rel):
        raise StudioError(404, "not_found", "no such file")
    path = (base / rel).resolve()
    if base not in path.parents or not path.is_file():
        raise StudioError(404, "not_found", "no such file")
    return path


def read_contained(base: Path, rel: str) -> bytes:
    """The bytes of a contained regular file, opened without following a final symlink."""
    path = contained(base, rel)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def dataset_home(data_dir: Path, dataset_id: str) -> Path:
    """The folder of an existing studio dataset; 404 for a bad or unknown id."""
    if not DATASET_ID_RE.match(dataset_id or ""):
        raise StudioError(404, "not_found", "no such dataset")
    home = root(data_dir) / dataset_id
    if home.is_symlink() or not (home / "dataset" / "manifest.jsonl").is_file():
        raise StudioError(404, "not_found", "no such dataset")
    return home


def list_datasets(data_dir: Path) -> list[str]:
    """Ids of every prepared studio dataset."""
    return sorted(p.name for p in root(data_dir).iterdir()
                  if DATASET_ID_RE.match(p.name) and not p.is_symlink() and (p / "dataset" / "manifest.jsonl").is_file())


def create_dataset(data_dir: Path, dataset_id: str, files: list[tuple[str, bytes]], *, trigger: str,
                   resolution: int = 512, min_side: int = 64) -> dict[str, Any]:
    """Store uploaded files under raw/ (zips are extracted member by member, checked) and run prepare."""
    from lorastudio.data.prepare import PrepareConfig, run_prepare
    from lorastudio.data.manifest import read_dataset_json, write_dataset_json
    from lorastudio.serving.uploads import UploadError, extract_zip

    if not DATASET_ID_RE.match(dataset_id or ""):
        raise StudioError(422, "bad_dataset_id", "dataset ids are 1-64 lowercase letters, digits, '_' or '-'")
    home = root(data_dir) / dataset_id
    raw = home / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for index, (name, data) in enumerate(files):
        if name.lower().endswith(".zip"):
            try:
                extract_zip(data, raw / f"zip{index:03d}")
            except UploadError as exc:
                raise StudioError(exc.status, exc.code, str(exc)) from None
            continue
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(name))[-100:].lstrip(".") or "upload"
        target = raw / safe  # the name is kept so `photo.txt` stays beside `photo.jpg` (sidecar captions)
        if target.exists():
            target = raw / f"{index:04d}_{safe}"
        target.write_bytes(data)
    cfg = PrepareConfig(resolution=resolution, min_side=min_side, workers=1, square=True)
    with _locks[dataset_id]:
        result = run_prepare(cfg, [str(raw)], home / "dataset", progress=False)
        facts = read_dataset_json(home / "dataset")
        write_dataset_json(home / "dataset", {**facts, "trigger": trigger})
        make_thumbnails(data_dir, home)
    return {"id": dataset_id, "accepted": len(result.records), "rejected": [_public_rejection(r) for r in result.rejected]}


_ABS_PATH = re.compile(r"/[^\s,;:'\"]+")


def _public_rejection(row: dict[str, Any]) -> dict[str, Any]:
    """A rejection as clients see it: file names only, never a server path."""
    detail = _ABS_PATH.sub(lambda m: Path(m.group(0)).name, str(row.get("detail") or ""))
    return {"source": Path(row.get("source", "")).name, "reason": row.get("reason"), "detail": detail}


def records(home: Path) -> list[dict[str, Any]]:
    """The dataset's manifest records."""
    return read_manifest(home / "dataset")


def rejected(home: Path) -> list[dict[str, Any]]:
    """Rejected inputs with reasons (file names only, never server paths)."""
    return [_public_rejection(r) for r in read_rejected(home / "dataset")]


def trigger_of(home: Path) -> str | None:
    """The dataset's trigger word from dataset.json."""
    from lorastudio.data.manifest import read_dataset_json

    try:
        return read_dataset_json(home / "dataset").get("trigger")
    except ValueError:
        return None


def version_of(record: dict[str, Any]) -> str:
    """A short hash of the record's stored caption state (its edit version)."""
    state = json.dumps([record.get("caption"), record.get("caption_text"), record.get("caption_source"),
                        len(record.get("caption_history") or [])], sort_keys=True)
    return hashlib.sha256(state.encode()).hexdigest()[:16]


def find(recs: list[dict[str, Any]], image_id: str) -> dict[str, Any]:
    """The record with this id (404 otherwise)."""
    for record in recs:
        if record["id"] == image_id:
            return record
    raise StudioError(404, "not_found", "no such image")


_file_index: dict[str, tuple[tuple[int, int, int], dict[str, str]]] = {}


def image_file(home: Path, image_id: str) -> str:
    """The manifest's `file` for an image id, from an index kept per manifest state (mtime, size,
    inode): a gallery asks for dozens of thumbnails at once and must not parse the manifest for each."""
    stat = (home / "dataset" / "manifest.jsonl").stat()
    state = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    hit = _file_index.get(str(home))
    if hit is None or hit[0] != state:
        hit = (state, {r["id"]: r["file"] for r in records(home)})
        _file_index[str(home)] = hit
    try:
        return hit[1][image_id]
    except KeyError:
        raise StudioError(404, "not_found", "no such image") from None


def image_bytes(home: Path, image_id: str) -> bytes:
    """The processed image of a record, read with containment checks."""
    return read_contained(home / "dataset", image_file(home, image_id))


def thumbnail(data_dir: Path, home: Path, image_id: str) -> tuple[bytes, str]:
    """A 256 px JPEG thumbnail, cached once per content hash; returns (bytes, content hash)."""
    data = image_bytes(home, image_id)
    digest = hashlib.sha256(data).hexdigest()
    cache = _thumb_path(data_dir, digest)
    if cache.is_file():
        return cache.read_bytes(), digest
    return _write_thumbnail(data, cache), digest


def make_thumbnails(data_dir: Path, home: Path) -> int:
    """Make every missing thumbnail of a dataset now (prepare calls this, so a freshly prepared
    gallery never waits on thumbnailing); returns how many were made."""
    made = 0
    for record in records(home):
        data = read_contained(home / "dataset", record["file"])
        cache = _thumb_path(data_dir, hashlib.sha256(data).hexdigest())
        if not cache.is_file():
            _write_thumbnail(data, cache)
            made += 1
    return made


def _thumb_path(data_dir: Path, digest: str) -> Path:
    return Path(data_dir) / "studio" / "thumbs" / digest[:2] / f"{digest}.jpg"


def _write_thumbnail(data: bytes, cache: Path) -> bytes:
    """Decode (with the safe limits), shrink to THUMB_SIDE, store atomically; returns the JPEG bytes."""
    from PIL import Image

    from lorastudio.data.images import DecodeLimits, decode_image

    def need(width: int, height: int) -> tuple[int, int]:  # lets a big JPEG decode at 1/2..1/8 scale
        scale = min(1.0, THUMB_SIDE / max(width, height))
        return max(1, round(width * scale)), max(1, round(height * scale))

    image = decode_image(data, DecodeLimits(max_pixels=64_000_000, max_bytes=200 * 1024 * 1024), need=need).image
    image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=82)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, cache)
    return buffer.getvalue()


def slots_view(record: dict[str, Any]) -> dict[str, str]:
    """The five slots (plus unplaced) as editable strings."""
    cap = caption_of(record)
    return {"trigger": cap.trigger or "", "subject": cap.subject or "", "shot": ", ".join(cap.shot),
            "objective": ", ".join(cap.objective), "unplaced": ", ".join(cap.unplaced), "style": ", ".join(cap.style)}


def caption_from_form(slots: dict[str, str]) -> Caption:
    """A Caption from the editor's five strings (list slots split on commas)."""
    return Caption.from_dict({k: (v or "").strip() for k, v in slots.items()})


def save_caption(home: Path, image_id: str, slots: dict[str, str], version: str) -> dict[str, Any]:
    """Write one image's caption if `version` is current; 409 with the stored state otherwise."""
    with _locks[home.name]:
        recs = records(home)
        record = find(recs, image_id)
        if version != version_of(record):
            raise StudioError(409, "conflict", "this caption was saved elsewhere since you loaded it",
                              current={"slots": slots_view(record), "version": version_of(record),
                                       "caption_text": record.get("caption_text") or ""})
        caption = caption_from_form(slots)
        if set_caption(record, caption, new_source("studio", params={"image": image_id})):
            write_manifest(home / "dataset", recs)
            write_sidecar(home / "dataset", record)
            _redo_clear(home, image_id)
        return {"slots": slots_view(record), "version": version_of(record), "caption_text": record.get("caption_text") or ""}


def _redo_path(home: Path) -> Path:
    return home / "redo.json"


def _redo_load(home: Path) -> dict[str, list]:
    path = _redo_path(home)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _redo_store(home: Path, stacks: dict[str, list]) -> None:
    _redo_path(home).write_text(json.dumps(stacks), encoding="utf-8")


def _redo_clear(home: Path, image_id: str) -> None:
    stacks = _redo_load(home)
    if stacks.pop(image_id, None) is not None:
        _redo_store(home, stacks)


def undo_image(home: Path, image_id: str) -> dict[str, Any]:
    """Step one image's caption back through its history; the undone state goes on its redo stack."""
    with _locks[home.name]:
        recs = records(home)
        record = find(recs, image_id)
        history = list(record.get("caption_history") or [])
        if not history:
            raise StudioError(409, "nothing_to_undo", "this caption has no earlier version")
        stacks = _redo_load(home)
        stacks.setdefault(image_id, []).append({k: record.get(k) for k in ("caption", "caption_text", "caption_source")})
        previous = history.pop()
        for key in ("caption", "caption_text", "caption_source"):
            record[key] = previous.get(key)
        record["caption_history"] = history
        write_manifest(home / "dataset", recs)
        write_sidecar(home / "dataset", record)
        _redo_store(home, stacks)
        return {"slots": slots_view(record), "version": version_of(record), "caption_text": record.get("caption_text") or ""}


def redo_image(home: Path, image_id: str) -> dict[str, Any]:
    """Re-apply the last undone caption of one image."""
    with _locks[home.name]:
        recs = records(home)
        record = find(recs, image_id)
        stacks = _redo_load(home)
        if not stacks.get(image_id):
            raise StudioError(409, "nothing_to_redo", "nothing was undone here")
        state = stacks[image_id].pop()
        history = list(record.get("caption_history") or [])
        history.append({k: record.get(k) for k in ("caption", "caption_text", "caption_source")})
        record.update(state)
        record["caption_history"] = history
        write_manifest(home / "dataset", recs)
        write_sidecar(home / "dataset", record)
        _redo_store(home, stacks)
        return {"slots": slots_view(record), "version": version_of(record), "caption_text": record.get("caption_text") or ""}


def _selection(home: Path, ids: list[str]) -> tuple[list[dict[str, Any]], set[str]]:
    """The manifest records and the selected ids, every one of which must exist (404 otherwise)."""
    recs = records(home)
    wanted = set(ids)
    missing = wanted - {r["id"] for r in recs}
    if missing:
        raise StudioError(404, "not_found", f"{len(missing)} selected image(s) do not exist")
    return recs, wanted


def bulk_add(home: Path, ids: list[str], slot: str, phrase: str, *, dry_run: bool) -> dict[str, Any]:
    """Add `phrase` to `slot` on the selected images as one op; the diff is returned either way."""
    from lorastudio.captions.edit import add_to_slot

    with _locks[home.name]:
        recs, wanted = _selection(home, ids)
        source = new_source("studio-bulk", params={"edit": "add", "slot": slot, "phrase": phrase})
        changes, touched = [], []
        for record in recs:
            if record["id"] not in wanted:
                continue
            before = record.get("caption_text") or ""
            try:
                after_cap = add_to_slot(caption_of(record), slot, phrase)
            except ValueError as exc:
                raise StudioError(422, "bad_slot", str(exc)) from None
            after = compose(after_cap)
            if after == before:
                continue
            changes.append({"image": record["id"], "before": before, "after": after})
            if not dry_run and set_caption(record, after_cap, source):
                touched.append(record)
        if touched:
            write_manifest(home / "dataset", recs)
            for record in touched:
                write_sidecar(home / "dataset", record)
        return {"op": None if dry_run else source["op"], "dry_run": dry_run, "changes": changes}


def review(home: Path, ids: list[str], *, reject: bool, reason: str = "") -> dict[str, Any]:
    """Reject (flag `rejected`: kept on disk, never trained on) or restore the selected images."""
    from lorastudio.data.manifest import REJECTED_FLAG

    with _locks[home.name]:
        recs, wanted = _selection(home, ids)
        changed = []
        for record in recs:
            if record["id"] not in wanted or (REJECTED_FLAG in record.get("flags", [])) == reject:
                continue
            flags = [f for f in record.get("flags", []) if f != REJECTED_FLAG]
            record["flags"] = [*flags, REJECTED_FLAG] if reject else flags
            if reject:
                record["rejected_by"] = {"reason": reason, "at": time.time()}
            else:
                record.pop("rejected_by", None)
            changed.append(record["id"])
        if changed:
            write_manifest(home / "dataset", recs)
        return {"action": "reject" if reject else "restore", "changed": changed}


def undo_last_op(home: Path) -> dict[str, Any]:
    """Revert the dataset's most recent caption op (a bulk edit, a fix or a single save)."""
    with _locks[home.name]:
        recs = records(home)
        op, reverted = undo_last(recs)
        if op is None:
            raise StudioError(409, "nothing_to_undo", "no caption change to undo")
        write_manifest(home / "dataset", recs)
        by_id = {r["id"]: r for r in recs}
        for image_id in reverted:
            write_sidecar(home / "dataset", by_id[image_id])
        return {"op": op, "reverted": reverted}


def audit(home: Path, *, tokenizer_dir: str | None) -> dict[str, Any]:
    """Run the audit (text rules + pixel detectors) and keep its JSON in audits/."""
    from lorastudio.audit import audit_dataset

    result = audit_dataset(home / "dataset", tokenizer_dir=tokenizer_dir or None, pixel=True)
    out = home / "audits"
    out.mkdir(exist_ok=True)
    stamp = f"{time.time_ns():020d}"
    body = result.to_dict()
    body.pop("dataset", None)  # a server path never leaves the server
    body["audit_id"] = stamp
    (out / f"{stamp}.json").write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    return body


def tokenizer_source(model: str | None) -> str:
    """What the audit counts tokens with: the served base model's folder, else the shipped toy base."""
    if model and Path(model).is_dir():
        return str(model)
    return str(Path(__file__).resolve().parents[1] / "toyworld" / "base")


def run_audit_job(data_dir: Path, model: str | None, job: Any, trace: Any) -> dict[str, Any]:
    """The worker side of an `audit` job: the same audit the API route runs, off the API process."""
    home = dataset_home(data_dir, str(job.params.get("dataset", "")))
    with trace.span("audit"):
        body = audit(home, tokenizer_dir=tokenizer_source(model))
    trace.add("audited", audit_id=body["audit_id"], **body["counts"])
    return {"audit_id": body["audit_id"], "counts": body["counts"], "images": []}


def audits(home: Path) -> list[str]:
    """Audit ids, newest first."""
    out = home / "audits"
    return sorted((p.stem for p in out.glob("*.json") if p.stem.isdigit()), reverse=True) if out.is_dir() else []


def load_audit(home: Path, audit_id: str | None = None) -> dict[str, Any] | None:
    """One stored audit (the latest when no id), or None."""
    ids = audits(home)
    if not ids:
        return None
    audit_id = audit_id or ids[0]
    if audit_id not in ids:
        raise StudioError(404, "not_found", "no such audit")
    return json.loads((home / "audits" / f"{audit_id}.json").read_text(encoding="utf-8"))


def plan_fix(home: Path, *, apply: bool) -> dict[str, Any]:
    """The caption diff `audit --fix` would write for the latest audit; with `apply`, write it as one op."""
    from lorastudio.audit.contamination import AttributeRow
    from lorastudio.audit.fix import apply_fixes, plan_fixes
    from lorastudio.captions.vocab import load_vocabulary

    latest = load_audit(home)
    if latest is None:
        raise StudioError(409, "no_audit", "run the audit first")
    fields = set(AttributeRow.__dataclass_fields__)
    rows = [AttributeRow(**{k: v for k, v in row.items() if k in fields}) for row in latest["contamination"]]
    with _locks[home.name]:
        recs = records(home)
        changes = plan_fixes(rows, recs, load_vocabulary(("food.korean",)))
        op = apply_fixes(home / "dataset", recs, changes) if apply and changes else None
    return {"op": op, "changes": [{"image": c.image, "before": c.before, "after": c.after, "added": list(c.added),
                                   "evidence": dict(getattr(c, "evidence", {}) or {})} for c in changes]}
