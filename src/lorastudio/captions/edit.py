"""Bulk caption edits over a dataset dir, each one recorded in the caption history.

Every edit is a pure function Caption -> Caption applied to the selected records by
`apply_edit`, which writes the manifest and sidecars once (atomically) with one `op` id, so
`lorastudio caption DATASET --undo` reverts the whole edit. `dry_run` computes the same
changes and writes nothing.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorastudio.captions.history import caption_of, new_source, set_caption
from lorastudio.captions.slots import LIST_SLOTS, Caption, add_phrase, compose, split_phrases
from lorastudio.captions.vocab import Vocabulary, normalise
from lorastudio.data.manifest import read_dataset_json, read_manifest, write_dataset_json, write_manifest, write_sidecar

EDITABLE_SLOTS = ("shot", "objective", "style", "unplaced")


@dataclass
class EditResult:
    """The records an edit changed, with their caption text before and after."""

    op: str
    changes: list[tuple[str, str, str]] = field(default_factory=list)
    selected: int = 0
    dry_run: bool = False


def rename_trigger(cap: Caption, old: str, new: str) -> Caption:
    """Replace the trigger `old` with `new` (also where `old` appears as a phrase)."""
    out = cap.copy()
    if out.trigger and out.trigger.lower() == old.lower():
        out.trigger = new
    for name in EDITABLE_SLOTS:
        setattr(out, name, [new if p.lower() == old.lower() else p for p in getattr(out, name)])
    return out


def add_to_slot(cap: Caption, slot: str, phrase: str) -> Caption:
    """Append `phrase` to `slot` unless the caption already has it."""
    out = cap.copy()
    add_phrase(out, phrase, slot)
    return out


def remove_from_slots(cap: Caption, phrase: str, slot: str | None = None,
                      vocab: Vocabulary | None = None) -> Caption:
    """Drop phrases equal to `phrase` (normalised); with `vocab`, also its synonyms."""
    out = cap.copy()
    key = normalise(phrase)
    attr = vocab.match(phrase) if vocab is not None else None

    def keep(p: str) -> bool:
        if normalise(p) == key:
            return False
        return not (attr is not None and vocab.match(p) is attr)

    for name in (slot,) if slot else EDITABLE_SLOTS:
        setattr(out, name, [p for p in getattr(out, name) if keep(p)])
    if slot is None and out.subject and normalise(out.subject) == key:
        out.subject = None
    return out


def find_replace(cap: Caption, find: str, replace: str, regex: bool = False) -> Caption:
    """Replace `find` inside every phrase (subject included); phrases left empty go."""
    pattern = re.compile(find if regex else re.escape(find), re.IGNORECASE)
    out = cap.copy()
    if out.subject:
        out.subject = " ".join(pattern.sub(replace, out.subject).split()) or None
    for name in EDITABLE_SLOTS:
        new_items = []
        for phrase in getattr(out, name):
            new_items.extend(split_phrases(pattern.sub(replace, phrase)))
        setattr(out, name, new_items)
    return out


def matches_where(record: dict[str, Any], where: str | None, vocab: Vocabulary | None) -> bool:
    """`where` selects records: a vocabulary phrase (synonyms count) or else a substring."""
    if not where:
        return True
    text = record.get("caption_text") or ""
    attr = vocab.match(where) if vocab is not None else None
    if attr is not None:
        return attr.id in vocab.mentions(text)
    return where.lower() in text.lower()


def apply_edit(dataset_dir: Path | str, edit: Callable[[Caption], Caption], *, name: str,
               params: dict[str, Any], where: str | None = None, vocab: Vocabulary | None = None,
               dry_run: bool = False) -> EditResult:
    """Run `edit` on every selected record; write manifest + sidecars unless `dry_run`."""
    dataset_dir = Path(dataset_dir)
    records = read_manifest(dataset_dir)
    source = new_source("edit", params={"edit": name, **params, **({"where": where} if where else {})})
    result = EditResult(op=source["op"], dry_run=dry_run)
    changed: list[dict[str, Any]] = []
    for record in records:
        if not matches_where(record, where, vocab):
            continue
        result.selected += 1
        before = record.get("caption_text") or ""
        after_cap = edit(caption_of(record, vocab))
        after = compose(after_cap)
        if after == before:
            continue
        result.changes.append((record["id"], before, after))
        if not dry_run and set_caption(record, after_cap, source):
            changed.append(record)
    if changed:
        write_manifest(dataset_dir, records)
        for record in changed:
            write_sidecar(dataset_dir, record)
    return result


def rename_dataset_trigger(dataset_dir: Path | str, old: str, new: str) -> bool:
    """Update dataset.json's trigger when it is `old`; True when changed."""
    try:
        facts = read_dataset_json(dataset_dir)
    except ValueError:
        return False
    if facts.get("trigger") != old:
        return False
    write_dataset_json(dataset_dir, {**facts, "trigger": new})
    return True


def phrase_diff(before: str, after: str) -> list[str]:
    """'- phrase' / '+ phrase' lines between two caption texts."""
    a, b = split_phrases(before), split_phrases(after)
    lines = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag in ("delete", "replace"):
            lines += [f"- {p}" for p in a[i1:i2]]
        if tag in ("insert", "replace"):
            lines += [f"+ {p}" for p in b[j1:j2]]
    return lines


@dataclass
class PhraseRow:
    """One line of the phrase-frequency table."""

    slot: str
    phrase: str
    images: int
    attribute: str | None


def phrase_stats(records: list[dict[str, Any]], vocab: Vocabulary | None = None) -> list[PhraseRow]:
    """How many images use each (slot, phrase), most frequent first; triggers and subjects too."""
    counts: Counter[tuple[str, str]] = Counter()
    for record in records:
        cap = caption_of(record, vocab)
        seen = {(slot, phrase.lower()) for slot, phrase in cap.phrases()}
        counts.update(seen)
    rows = []
    for (slot, phrase), n in counts.items():
        attr = vocab.match(phrase) if vocab is not None and slot in LIST_SLOTS else None
        rows.append(PhraseRow(slot, phrase, n, attr.id if attr else None))
    order = {"trigger": 0, "subject": 1, "shot": 2, "objective": 3, "unplaced": 4, "style": 5}
    rows.sort(key=lambda r: (order[r.slot], -r.images, r.phrase))
    return rows
