"""The `prepare` stage: raw photo folders -> a dataset dir (see DESIGN.md, "Stage contract").

Flow: discover inputs -> decode, bucket, resize and measure each in a process pool (one pass
over the bytes: sha256, header checks, draft decode, resample, hashes) -> dedupe in the
parent -> move the accepted images into `images/` and write the manifest, the rejected
list, `dataset.json` and `report.html`.

Re-running into the same output is incremental: a source whose sha256 is already in the
manifest (made with the same processing settings) is not decoded again, and every caption
field a later stage wrote is kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import Field, field_validator, model_validator

from lorastudio import __version__
from lorastudio.config.loader import Schema, write_resolved
from lorastudio.data import manifest as mf
from lorastudio.data.buckets import BucketSpec, Placement, bucket_list, crop_loss, place
from lorastudio.data.images import DecodeError, DecodeLimits, decode_image, parse_color
from lorastudio.data.quality import Exposure, blur_score, exposure, exposure_flags, near_duplicate_pairs, phash, sha256_bytes
from lorastudio.data.sources import Candidate, Discovery, discover, read_sidecar_caption

RESOLVED_NAME = "prepare.resolved.yaml"
STAGING_DIR = ".staging"
QUALITY_FLAGS = ("blurry", "underexposed", "overexposed")
# Processing settings: when one of these changes, every image is decoded again.
_PROCESSING_KEYS = ("resolution", "bucket_step", "min_bucket_side", "max_bucket_side", "square", "upscale", "background", "image_format", "jpeg_quality")


class PrepareConfig(Schema):
    """Options of `lorastudio prepare` (YAML via --config, or key=value overrides)."""

    resolution: int = Field(512, ge=64, le=8192, description="Training resolution: buckets hold at most resolution^2 pixels (an area cap, as in kohya).")
    bucket_step: int = Field(64, ge=8, le=512, description="Bucket sides are multiples of this many pixels.")
    min_bucket_side: int | None = Field(None, ge=8, description="Shortest bucket side; null = resolution / 2.")
    max_bucket_side: int | None = Field(None, ge=8, description="Longest bucket side; null = resolution * 2.")
    square: bool = Field(False, description="Put every image in the single square bucket (centre crop).")
    upscale: bool = Field(True, description="Scale small images up to cover their bucket (flagged 'upscaled'); false = kohya's no-upscale buckets.")
    min_side: int = Field(256, ge=1, description="Reject images whose shorter side (after EXIF rotation) is below this many pixels.")
    max_pixels: int = Field(64_000_000, ge=1, description="Reject images whose header promises more pixels than this (checked before decoding).")
    max_bytes: int = Field(200 * 1024 * 1024, ge=1, description="Reject files larger than this many bytes.")
    background: str = Field("#ffffff", description="Colour that transparent pixels are composited on (#rrggbb).")
    near_duplicate_threshold: int = Field(6, ge=-1, le=32, description="Perceptual-hash Hamming distance at or below which two images count as near-duplicates; -1 turns the check off.")
    near_duplicates: Literal["reject", "flag"] = Field("reject", description="'reject' keeps the largest of a near-duplicate group; 'flag' keeps all and flags the others near_duplicate_of:<id>.")
    blur_threshold: float = Field(0.02, ge=0.0, description="Flag 'blurry' below this normalised Laplacian variance (Laplacian variance / intensity variance at 512 px).")
    dark_mean: float = Field(40.0, ge=0.0, le=255.0, description="Flag 'underexposed' when mean luminance is below this and highlights are dim too.")
    bright_mean: float = Field(215.0, ge=0.0, le=255.0, description="Flag 'overexposed' when mean luminance is above this and shadows are bright too.")
    image_format: Literal["jpg", "png", "webp"] = Field("jpg", description="Format of the processed images in images/.")
    jpeg_quality: int = Field(95, ge=50, le=100, description="JPEG/WebP quality of the processed images.")
    workers: int = Field(0, ge=0, le=256, description="Worker processes; 0 = one per CPU core.")

    @model_validator(mode="after")
    def _check_buckets(self) -> PrepareConfig:
        for key in ("min_bucket_side", "max_bucket_side"):
            value = getattr(self, key)
            if value is not None and value % self.bucket_step:
                raise ValueError(f"{key}={value} is not a multiple of bucket_step={self.bucket_step}")
        lo, hi = self.bucket_spec().side_range
        if lo > hi:
            raise ValueError(f"min bucket side {lo} is larger than max bucket side {hi}")
        if self.resolution < self.bucket_step:
            raise ValueError(f"resolution {self.resolution} is smaller than bucket_step {self.bucket_step}")
        return self

    @field_validator("background")
    @classmethod
    def _check_background(cls, value: str) -> str:
        parse_color(value)
        return value

    def bucket_spec(self) -> BucketSpec:
        """The bucketing part of the config."""
        return BucketSpec(
            resolution=self.resolution,
            step=self.bucket_step,
            min_side=self.min_bucket_side,
            max_side=self.max_bucket_side,
            square=self.square,
            upscale=self.upscale,
        )

    def fingerprint(self) -> str:
        """Hash of the settings that change processed pixels (not thresholds or limits)."""
        facts = {key: getattr(self, key) for key in _PROCESSING_KEYS}
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


class PrepareError(Exception):
    """A fatal problem (bad output folder, unreadable existing dataset); the message says what to do."""


@dataclass
class PrepareResult:
    """What a run did; `summary_lines()` is what the CLI prints."""

    out_dir: Path
    records: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    new: int = 0
    unchanged: int = 0
    dropped: int = 0
    bucket_counts: dict[str, int] = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        """A short human summary: counts, reasons, flags, buckets, where the report is."""
        reasons = Counter(r["reason"] for r in self.rejected)
        flags = Counter(f.split(":")[0] for r in self.records for f in r.get("flags", []))
        lines = [
            f"accepted {len(self.records)} ({self.new} processed, {self.unchanged} unchanged), rejected {len(self.rejected)}"
            + (f", dropped {self.dropped} no longer given" if self.dropped else "")
        ]
        if reasons:
            lines.append("rejected: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
        if flags:
            lines.append("flags: " + ", ".join(f"{k} {v}" for k, v in flags.most_common()))
        if self.bucket_counts:
            lines.append("buckets: " + ", ".join(f"{k} x{v}" for k, v in self.bucket_counts.items()))
        lines.append(f"dataset: {self.out_dir}  report: {self.out_dir / mf.REPORT}")
        return lines


def check_paths(sources: list[str], reg: list[str], out_dir: Path) -> None:
    """Refuse an output folder that is, contains or sits inside an input (inputs stay untouched)."""
    out_real = os.path.realpath(out_dir)
    for src in [*sources, *reg]:
        if not os.path.exists(src):
            raise PrepareError(f"input {src} does not exist")
        src_real = os.path.realpath(src)
        if src_real == out_real or out_real.startswith(src_real + os.sep):
            raise PrepareError(f"--out {out_dir} is inside the input {src}; choose a separate output folder")
        if src_real.startswith(out_real + os.sep):
            raise PrepareError(f"input {src} is inside --out {out_dir}; choose a separate output folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise PrepareError(f"--out {out_dir} exists and is not a folder")


def _load_previous(out_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The existing manifest and dataset.json in `out_dir` (empty when it is a new folder)."""
    if not (out_dir / mf.MANIFEST).is_file():
        return [], {}
    try:
        records = mf.read_manifest(out_dir)
        facts = mf.read_dataset_json(out_dir) if (out_dir / mf.DATASET_JSON).is_file() else {}
    except mf.ManifestError as exc:
        raise PrepareError(f"cannot update the existing dataset: {exc}") from None
    return records, facts


def quality_flags(record: dict[str, Any], cfg: PrepareConfig) -> list[str]:
    """Recompute threshold flags from the stored scores so threshold changes apply on re-runs."""
    flags = [f for f in record.get("flags", []) if f not in QUALITY_FLAGS and not f.startswith("near_duplicate_of:")]
    quality = record.get("quality") or {}
    if "blur" in quality and quality["blur"] < cfg.blur_threshold:
        flags.append("blurry")
    if "luma_mean" in quality:
        stats = Exposure(mean=quality["luma_mean"], p05=quality["luma_p05"], p95=quality["luma_p95"])
        flags.extend(exposure_flags(stats, cfg.dark_mean, cfg.bright_mean))
    return flags


def _new_record(cand: Candidate, res: dict[str, Any], ext: str) -> dict[str, Any]:
    record_id = res["sha256"][:16]
    return {
        "id": record_id,
        "file": f"{mf.IMAGES_DIR}/{record_id}.{ext}",
        "source": cand.source,
        "sha256": res["sha256"],
        "orig_width": res["orig_width"],
        "orig_height": res["orig_height"],
        "width": res["width"],
        "height": res["height"],
        "crop": res["crop"],
        "repeats": cand.repeats,
        "role": cand.role,
        "flags": res["flags"],
        "caption": None,
        "caption_text": None,
        "caption_source": None,
        "format": res["format"],
        "crop_loss": res["crop_loss"],
        "phash": res["phash"],
        "quality": res["quality"],
        "_staged": res["staged"],
    }


def _carry_captions(record: dict[str, Any], previous: dict[str, Any] | None, cand: Candidate) -> None:
    """Keep caption fields from the dataset; otherwise take a sidecar caption from the source."""
    if previous is not None and any(previous.get(k) for k in ("caption", "caption_text")):
        for key, value in previous.items():
            if key.startswith("caption"):
                record[key] = value
        return
    text, flags = read_sidecar_caption(cand.path)
    record["flags"] = record["flags"] + [f for f in flags if f not in record["flags"]]
    if text:
        record["caption_text"] = text
        record["caption_source"] = {"backend": "sidecar", "model": None, "revision": None, "params": {"file": cand.source}, "time": _now()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _rejection(cand: Candidate, reason: str, detail: str, **extra: Any) -> dict[str, Any]:
    row = {"source": cand.source, "reason": reason, "detail": detail, "role": cand.role}
    row.update({k: v for k, v in extra.items() if v is not None})
    return row


def _resolve_dupes(entries: list[tuple[dict, Candidate]], cfg: PrepareConfig) -> tuple[list[dict], list[dict]]:
    """Exact duplicates by sha256 (across roles, so ids stay unique; a training copy wins over
    a regularization copy), then near-duplicates by perceptual hash within each role.

    The kept image of a near-duplicate group is the one with the most original pixels (first
    on ties); the others are rejected with `duplicate_of` (or flagged, with near_duplicates=flag).
    """
    kept: list[dict] = []
    rejected: list[dict] = []
    by_sha: dict[str, tuple[dict, Candidate]] = {}
    for record, cand in sorted(entries, key=lambda e: e[1].role != "train"):
        first = by_sha.get(record["sha256"])
        if first is None:
            by_sha[record["sha256"]] = (record, cand)
        else:
            rejected.append(_rejection(cand, "duplicate", f"same bytes as {first[1].source}", duplicate_of=first[0]["id"], sha256=record["sha256"]))
    for role in sorted({cand.role for _, cand in by_sha.values()}):
        group = [e for e in by_sha.values() if e[1].role == role]
        drop = _near_duplicate_losers(group, cfg)
        for index, (record, cand) in enumerate(group):
            if index in drop and cfg.near_duplicates == "reject":
                keeper, dist = drop[index]
                rejected.append(_rejection(cand, "near_duplicate", f"perceptual hash within {dist} bits of {keeper['source']}", duplicate_of=keeper["id"], sha256=record["sha256"]))
                continue
            if index in drop:
                record["flags"].append(f"near_duplicate_of:{drop[index][0]['id']}")
            kept.append(record)
    return kept, rejected


def _near_duplicate_losers(group: list[tuple[dict, Candidate]], cfg: PrepareConfig) -> dict[int, tuple[dict, int]]:
    """index -> (kept record, distance) for every image that loses to a larger near-duplicate."""
    hashes = [int(record["phash"], 16) for record, _ in group]
    parent = list(range(len(group)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    closest: dict[int, int] = {}
    for i, j, dist in near_duplicate_pairs(hashes, cfg.near_duplicate_threshold):
        parent[root(j)] = root(i)
        closest[i] = min(closest.get(i, dist), dist)
        closest[j] = min(closest.get(j, dist), dist)
    clusters: dict[int, list[int]] = {}
    for i in closest:
        clusters.setdefault(root(i), []).append(i)
    losers: dict[int, tuple[dict, int]] = {}
    for members in clusters.values():
        best = max(members, key=lambda i: (group[i][0]["orig_width"] * group[i][0]["orig_height"], -i))
        for i in members:
            if i != best:
                losers[i] = (group[best][0], closest[i])
    return losers


def run_prepare(
    cfg: PrepareConfig,
    sources: list[str],
    out_dir: Path | str,
    *,
    reg: list[str] | None = None,
    progress: bool = True,
) -> PrepareResult:
    """Run the whole stage; returns what was accepted and rejected. Raises PrepareError."""
    out_dir = Path(out_dir)
    reg = list(reg or [])
    check_paths(sources, reg, out_dir)
    previous, facts = _load_previous(out_dir)
    found = discover(sources, "train", [out_dir])
    discover(reg, "reg", [out_dir], found)
    same_settings = facts.get("settings_fingerprint") == cfg.fingerprint()
    reusable = {r["sha256"]: r for r in previous if same_settings and (out_dir / r["file"]).is_file()}
    previous_by_sha = {r["sha256"]: r for r in previous}
    staging = out_dir / mf.IMAGES_DIR / STAGING_DIR
    staging.mkdir(parents=True, exist_ok=True)
    try:
        results = run_workers(cfg, found.candidates, staging, set(reusable), progress=progress)
        entries, rejected = _collect(cfg, found, results, reusable, previous_by_sha)
        kept, dupes = _resolve_dupes(entries, cfg)
        rejected = found.rejected + rejected + dupes
        new = _finalize_files(out_dir, kept, previous)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    kept.sort(key=lambda r: (r["role"], r["source"]))
    rejected.sort(key=lambda r: (r.get("role", ""), r["source"]))
    result = PrepareResult(out_dir=out_dir, records=kept, rejected=rejected, new=new, unchanged=len(kept) - new)
    result.dropped = len({r["sha256"] for r in previous} - {r["sha256"] for r in kept} - {r.get("sha256") for r in rejected})
    _write_outputs(cfg, result, facts, sources, reg)
    return result


def _collect(
    cfg: PrepareConfig,
    found: Discovery,
    results: list[dict[str, Any]],
    reusable: dict[str, dict],
    previous_by_sha: dict[str, dict],
) -> tuple[list[tuple[dict, Candidate]], list[dict]]:
    """Turn worker results into (record, candidate) pairs and rejection rows."""
    entries: list[tuple[dict, Candidate]] = []
    rejected: list[dict] = []
    for cand, res in zip(found.candidates, results):
        if res["status"] == "rejected":
            rejected.append(_rejection(cand, res["reason"], res.get("detail", ""), sha256=res.get("sha256")))
            continue
        if res["status"] == "known":
            record = dict(reusable[res["sha256"]])
            record.update(source=cand.source, repeats=cand.repeats, role=cand.role)
            if min(record["orig_width"], record["orig_height"]) < cfg.min_side:
                rejected.append(_rejection(cand, "too_small", f"{record['orig_width']}x{record['orig_height']} < min_side {cfg.min_side}", sha256=record["sha256"]))
                continue
            if not record.get("caption_text"):
                _carry_captions(record, None, cand)
        else:
            record = _new_record(cand, res, cfg.image_format)
            _carry_captions(record, previous_by_sha.get(res["sha256"]), cand)
        record["flags"] = quality_flags(record, cfg)
        entries.append((record, cand))
    return entries, rejected


def _finalize_files(out_dir: Path, kept: list[dict], previous: list[dict]) -> int:
    """Move staged images into images/, drop images no longer referenced, write sidecars."""
    new = 0
    for record in kept:
        staged = record.pop("_staged", None)
        if staged is not None:
            os.replace(staged, out_dir / record["file"])
            new += 1
    live = {r["file"] for r in kept}
    for old in previous:
        rel = old.get("file", "")
        # Only files our own manifest listed are removed, and only inside images/.
        if rel not in live and rel.startswith(mf.IMAGES_DIR + "/") and ".." not in Path(rel).parts:
            (out_dir / rel).unlink(missing_ok=True)
            (out_dir / rel).with_suffix(".txt").unlink(missing_ok=True)
    for record in kept:
        mf.write_sidecar(out_dir, record)
    return new


def _write_outputs(cfg: PrepareConfig, result: PrepareResult, facts: dict[str, Any], sources: list[str], reg: list[str]) -> None:
    """manifest.jsonl, rejected.jsonl, dataset.json, the resolved config and report.html."""
    from lorastudio.data.report import write_report

    out_dir = result.out_dir
    mf.write_manifest(out_dir, result.records)
    mf.write_jsonl(out_dir / mf.REJECTED, result.rejected)
    counts = Counter(f"{r['width']}x{r['height']}" for r in result.records)
    result.bucket_counts = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    facts = dict(facts)
    facts.update(
        {
            "tool": "lorastudio",
            "version": __version__,
            "resolution": cfg.resolution,
            "bucket_step": cfg.bucket_step,
            "buckets": [list(b) for b in bucket_list(cfg.bucket_spec())] if cfg.upscale else sorted({(r["width"], r["height"]) for r in result.records}),
            "bucket_counts": result.bucket_counts,
            "trigger": facts.get("trigger"),
            "counts": {
                "accepted": len(result.records),
                "rejected": len(result.rejected),
                "train": sum(1 for r in result.records if r["role"] == "train"),
                "reg": sum(1 for r in result.records if r["role"] == "reg"),
                "captioned": sum(1 for r in result.records if r.get("caption_text")),
            },
            "sources": list(sources),
            "reg_sources": list(reg),
            "settings_fingerprint": cfg.fingerprint(),
            "updated": _now(),
        }
    )
    mf.write_dataset_json(out_dir, facts)
    write_resolved(cfg, out_dir, RESOLVED_NAME)
    write_report(out_dir, result.records, result.rejected, facts)


# ---- worker side: everything below runs inside the process pool --------------------------

_WORKER: dict[str, Any] = {}
_SAVE_ARGS = {"jpg": ("JPEG", {"subsampling": 0}), "png": ("PNG", {"compress_level": 4}), "webp": ("WEBP", {"method": 4})}


def _init_worker(settings: dict[str, Any]) -> None:
    _WORKER.clear()
    _WORKER.update(settings)


def _worker_settings(cfg: PrepareConfig, staging: Path, known: set[str]) -> dict[str, Any]:
    spec = cfg.bucket_spec()
    return {
        "limits": DecodeLimits(max_pixels=cfg.max_pixels, max_bytes=cfg.max_bytes),
        "spec": spec,
        "buckets": bucket_list(spec),
        "background": parse_color(cfg.background),
        "min_side": cfg.min_side,
        "format": cfg.image_format,
        "quality": cfg.jpeg_quality,
        "staging": str(staging),
        "known": frozenset(known),
    }


def _read_source(path: str, max_bytes: int) -> bytes:
    """Read a regular file without following it into a FIFO and without reading past the limit."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise DecodeError("not_a_regular_file", "not a regular file")
        if info.st_size > max_bytes:
            raise DecodeError("file_too_large", f"{info.st_size} bytes > limit {max_bytes}")
        return fh.read(max_bytes + 1)


def process_file(task: tuple[int, str]) -> dict[str, Any]:
    """Hash, decode, bucket, resample and measure one source; never raises for bad input."""
    index, path = task
    try:
        data = _read_source(path, _WORKER["limits"].max_bytes)
    except DecodeError as exc:
        return {"status": "rejected", "reason": exc.reason, "detail": exc.detail}
    except OSError as exc:
        return {"status": "rejected", "reason": "unreadable", "detail": exc.strerror or str(exc)}
    digest = sha256_bytes(data)
    if digest in _WORKER["known"]:
        return {"status": "known", "sha256": digest}
    try:
        return _process_bytes(index, data, digest)
    except DecodeError as exc:
        return {"status": "rejected", "reason": exc.reason, "detail": exc.detail, "sha256": digest}
    except Exception as exc:  # crafted files make decoders raise anything; record it and go on
        return {"status": "rejected", "reason": "decode_failed", "detail": f"{type(exc).__name__}: {exc}", "sha256": digest}


def _process_bytes(index: int, data: bytes, digest: str) -> dict[str, Any]:
    placement: list[Placement] = []

    def need(width: int, height: int) -> tuple[int, int]:
        if min(width, height) < _WORKER["min_side"]:
            raise DecodeError("too_small", f"{width}x{height}: shorter side below min_side {_WORKER['min_side']}")
        try:
            placed = place(width, height, _WORKER["spec"], _WORKER["buckets"])
        except ValueError as exc:
            raise DecodeError("too_small", str(exc)) from None
        placement.append(placed)
        x0, y0, x1, y1 = placed.crop
        # Decode big enough that the crop still has at least bucket-size pixels.
        return (max(1, int(width * placed.bucket[0] / (x1 - x0))), max(1, int(height * placed.bucket[1] / (y1 - y0))))

    decoded = decode_image(data, _WORKER["limits"], need=need, background=_WORKER["background"])
    placed = placement[0]
    factor = decoded.scale
    box = tuple(v * factor for v in placed.crop)
    out = decoded.image.resize(placed.bucket, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    fmt, extra = _SAVE_ARGS[_WORKER["format"]]
    staged = os.path.join(_WORKER["staging"], f"{index}.{_WORKER['format']}")
    quality = {} if fmt == "PNG" else {"quality": _WORKER["quality"]}
    out.save(staged, fmt, **quality, **extra)
    stats = exposure(out)
    flags = list(decoded.flags) + (["upscaled"] if placed.upscaled else [])
    return {
        "status": "ok",
        "sha256": digest,
        "orig_width": decoded.width,
        "orig_height": decoded.height,
        "width": placed.bucket[0],
        "height": placed.bucket[1],
        "crop": placed.crop_int,
        "crop_loss": round(crop_loss(placed, decoded.width, decoded.height), 4),
        "flags": flags,
        "format": decoded.format,
        "phash": f"{phash(decoded.image):016x}",
        "quality": {"blur": round(blur_score(out), 5), "luma_mean": round(stats.mean, 2), "luma_p05": round(stats.p05, 2), "luma_p95": round(stats.p95, 2)},
        "staged": staged,
    }


def run_workers(cfg: PrepareConfig, candidates: list[Candidate], staging: Path, known: set[str], *, progress: bool) -> list[dict[str, Any]]:
    """Process every candidate, in a process pool when there is more than a handful."""
    from tqdm import tqdm

    settings = _worker_settings(cfg, staging, known)
    tasks = [(i, str(c.path)) for i, c in enumerate(candidates)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(cfg.workers or cores, max(1, len(tasks)))
    bar = dict(total=len(tasks), desc="prepare", unit="img", disable=not progress, leave=False)
    if workers <= 1 or len(tasks) < 4:
        _init_worker(settings)
        return [process_file(t) for t in tqdm(tasks, **bar)]
    from concurrent.futures import ProcessPoolExecutor

    ctx = _pool_context()
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(settings,)) as pool:
        chunk = max(1, min(8, len(tasks) // (workers * 8)))
        return list(tqdm(pool.map(process_file, tasks, chunksize=chunk), **bar))


def _pool_context():
    """fork when the parent is a plain single-threaded CLI process, spawn otherwise.

    fork skips re-importing numpy/Pillow/pydantic in every worker (about half a CPU-second
    each), but copying a process that holds other threads (torch's pools inside a test run
    or a notebook) can deadlock the child, so those parents pay for spawn instead.
    """
    import multiprocessing
    import sys
    import threading

    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1 and "torch" not in sys.modules:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")
