"""Resumable batch captioning of a dataset dir.

The manifest is the progress log: after every batch (or every `save_every` images) the
updated records are written atomically, so an interrupted run loses at most one batch and a
rerun continues where it stopped. `--only-missing` skips captioned records; `--overwrite`
keeps a small progress file (`.caption_run.json`) so its rerun skips what it already redid.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorastudio.captions import glossary
from lorastudio.captions.backends import BackendOutput, RecordCaptionBackend
from lorastudio.captions.history import new_op_id, new_source, set_caption
from lorastudio.captions.slots import SLOT_BY_NUMBER, Caption, add_phrase, caption_from_slots, parse, subject_phrase
from lorastudio.captions.vocab import Vocabulary
from lorastudio.data.manifest import (
    ManifestError,
    atomic_write_text,
    read_dataset_json,
    read_manifest,
    write_dataset_json,
    write_manifest,
    write_sidecar,
)

PROGRESS_FILE = ".caption_run.json"
MAX_IMAGE_PIXELS = 64_000_000
MAX_IMAGE_BYTES = 100 * 1024 * 1024
SUBJECT_SOURCES = ("folder", "filename")
_GLOSS = re.compile(r"\(([^()]+)\)\s*$")


@dataclass
class CaptionOptions:
    """How backend output becomes slots (see `build_caption`)."""

    trigger: str | None = None
    subject: str | None = None
    subject_from: str | None = None
    subject_template: str = "a photo of {}"
    overwrite: bool = False
    batch_size: int = 8
    save_every: int | None = None


@dataclass
class RunSummary:
    """What a captioning run did."""

    op: str
    captioned: list[str] = field(default_factory=list)
    skipped: int = 0
    no_output: list[str] = field(default_factory=list)
    unmapped_hangul: dict[str, list[str]] = field(default_factory=dict)
    unplaced: dict[str, list[str]] = field(default_factory=dict)
    resumed: int = 0
    given: int = 0  # images handed to the backend in this run


def _translate(text: str, unmapped: list[str]) -> str:
    out, missing = glossary.translate(text)
    unmapped.extend(missing)
    return " ".join(out.split())


def record_subject(record: dict[str, Any], source: str) -> str:
    """Subject text from the record's original folder or file name (before translation)."""
    if source not in SUBJECT_SOURCES:
        raise ValueError(f"subject_from must be one of {', '.join(SUBJECT_SOURCES)} (got '{source}')")
    path = Path(record.get("source") or record["file"])
    name = path.parent.name if source == "folder" else path.name
    return glossary.name_to_subject(name)


def build_caption(output: BackendOutput, record: dict[str, Any], opts: CaptionOptions,
                  vocab: Vocabulary) -> tuple[Caption, list[str]]:
    """Slots for one image from a backend's output; returns (caption, unmapped Hangul).

    Backend slots win; else the text is parsed and tags are mapped through the vocabulary
    (unknown tags are kept as unplaced phrases). The subject comes from `opts.subject`, then
    `opts.subject_from`, then the backend; the trigger from `opts.trigger` goes first.
    """
    if output.slots:
        cap = caption_from_slots(output.slots)
    else:
        cap = parse(output.text or "", vocab, opts.trigger)
        for tag, _score in output.tags:
            attr = vocab.by_tag(tag)
            if attr is not None:
                add_phrase(cap, attr.phrase, SLOT_BY_NUMBER[attr.slot])
            else:
                add_phrase(cap, tag.replace("_", " ").strip(), "unplaced")
    user_subject = opts.subject or (record_subject(record, opts.subject_from) if opts.subject_from else None)
    if user_subject:
        if cap.subject:
            # The backend's own subject still describes the image: keep it, flagged.
            cap.unplaced.insert(0, cap.subject)
        cap.subject = subject_phrase(user_subject, opts.subject_template)
    elif output.slots and cap.subject:
        cap.subject = subject_phrase(cap.subject, opts.subject_template)
    if opts.trigger:
        cap.trigger = opts.trigger
    unmapped: list[str] = []
    if cap.subject:
        cap.subject = _translate(cap.subject, unmapped)
    for name in ("shot", "objective", "style", "unplaced"):
        setattr(cap, name, [_translate(p, unmapped) for p in getattr(cap, name)])
    _place_translated(cap, vocab)
    return cap, unmapped


def _place_translated(cap: Caption, vocab: Vocabulary) -> None:
    """Move unplaced phrases the vocabulary knows after translation ('kkae (sesame seeds)')."""
    still = []
    for phrase in cap.unplaced:
        gloss = _GLOSS.search(phrase)
        attr = vocab.match(phrase) or (vocab.match(gloss.group(1)) if gloss else None)
        if attr is None:
            still.append(phrase)
        else:
            getattr(cap, SLOT_BY_NUMBER[attr.slot]).append(phrase)
    cap.unplaced = still


def open_image(dataset_dir: Path, record: dict[str, Any]):
    """Decode a record's processed image as RGB, refusing paths outside the dataset dir."""
    from PIL import Image

    root = dataset_dir.resolve()
    path = (dataset_dir / record["file"]).resolve()
    if root not in path.parents:
        raise ManifestError(f"record {record['id']}: file '{record['file']}' is outside {dataset_dir}")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise ManifestError(f"record {record['id']}: {path.name} is larger than {MAX_IMAGE_BYTES} bytes")
    with Image.open(path) as img:
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise ManifestError(f"record {record['id']}: {path.name} has more than {MAX_IMAGE_PIXELS} pixels")
        return img.convert("RGB")


def _run_key(provenance: dict, opts: CaptionOptions) -> str:
    payload = json.dumps([provenance, opts.trigger, opts.subject, opts.subject_from, opts.overwrite],
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _load_progress(dataset_dir: Path, key: str) -> dict[str, Any]:
    path = dataset_dir / PROGRESS_FILE
    if path.is_file():
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            state = {}
        if state.get("key") == key:
            return state
    return {"key": key, "op": new_op_id(), "done": []}


def _update_dataset_trigger(dataset_dir: Path, trigger: str | None) -> str | None:
    """Write `trigger` into dataset.json (returns the dataset trigger in effect)."""
    try:
        facts = read_dataset_json(dataset_dir)
    except ManifestError:
        facts = None
    if trigger is None:
        return (facts or {}).get("trigger")
    if facts is None or facts.get("trigger") != trigger:
        write_dataset_json(dataset_dir, {**(facts or {}), "trigger": trigger})
    return trigger


def caption_dataset(dataset_dir: Path | str, backend: Any, vocab: Vocabulary, opts: CaptionOptions,
                    *, progress: bool = True) -> RunSummary:
    """Caption the dataset dir's records with `backend`, saving progress every batch."""
    from tqdm import tqdm

    dataset_dir = Path(dataset_dir)
    records = read_manifest(dataset_dir)
    if opts.batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    opts.trigger = opts.trigger or _update_dataset_trigger(dataset_dir, None)
    _update_dataset_trigger(dataset_dir, opts.trigger)
    provenance = dict(backend.provenance())
    key = _run_key(provenance, opts)
    state = _load_progress(dataset_dir, key)
    done = set(state["done"])
    todo = [r for r in records if r["id"] not in done and (opts.overwrite or not r.get("caption_text"))]
    summary = RunSummary(op=state["op"], skipped=len(records) - len(todo), resumed=len(done), given=len(todo))
    source = new_source(provenance.get("backend", backend.name), model=provenance.get("model"),
                        revision=provenance.get("revision"), params=provenance.get("params"), op=state["op"])
    save_every = opts.save_every or opts.batch_size
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        if not pending:
            return
        write_manifest(dataset_dir, records)
        for rec in pending:
            write_sidecar(dataset_dir, rec)
        state["done"] = sorted(done)
        atomic_write_text(dataset_dir / PROGRESS_FILE, json.dumps(state) + "\n")
        pending.clear()

    bar = tqdm(total=len(todo), unit="img", desc=f"caption [{backend.name}]", disable=not progress)
    try:
        for start in range(0, len(todo), opts.batch_size):
            batch = todo[start:start + opts.batch_size]
            outputs = _caption_batch(backend, dataset_dir, batch)
            for record, output in zip(batch, outputs, strict=True):
                _apply_output(record, output, opts, vocab, source, summary)
                done.add(record["id"])
                pending.append(record)
            bar.update(len(batch))
            if len(pending) >= save_every:
                flush()
    finally:
        flush()
        bar.close()
    (dataset_dir / PROGRESS_FILE).unlink(missing_ok=True)
    return summary


def _caption_batch(backend: Any, dataset_dir: Path, batch: list[dict[str, Any]]) -> list[BackendOutput]:
    if isinstance(backend, RecordCaptionBackend):
        outputs = backend.caption_records(dataset_dir, batch)
    else:
        outputs = backend.caption_batch([open_image(dataset_dir, r) for r in batch])
    if len(outputs) != len(batch):
        raise RuntimeError(f"backend {backend.name} returned {len(outputs)} outputs for {len(batch)} images")
    return outputs


def _apply_output(record: dict[str, Any], output: BackendOutput, opts: CaptionOptions, vocab: Vocabulary,
                  source: dict[str, Any], summary: RunSummary) -> None:
    if output.is_empty():
        summary.no_output.append(record["id"])
        return
    cap, unmapped = build_caption(output, record, opts, vocab)
    if unmapped:
        summary.unmapped_hangul[record["id"]] = unmapped
    if cap.unplaced:
        summary.unplaced[record["id"]] = list(cap.unplaced)
    if set_caption(record, cap, source):
        summary.captioned.append(record["id"])
