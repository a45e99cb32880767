"""`audit --fix`: name each contaminant in slot 4 of the images that show it unnamed.

Changes are planned first (`plan_fixes`) so the CLI can show the diff and change nothing
without `--yes`. Applying them goes through the caption history (one op id for the whole
fix, so `lorastudio caption --undo` reverts it) and rewrites the sidecars.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorastudio.audit.contamination import CONTAMINANT, AttributeRow
from lorastudio.captions.history import caption_of, new_op_id, new_source, set_caption
from lorastudio.captions.slots import Caption, add_phrase, compose


@dataclass
class FixChange:
    """The new caption for one image and the phrases the fix adds."""

    image: str
    before: str
    after: str
    caption: Caption
    added: list[str] = field(default_factory=list)


def plan_fixes(rows: Sequence[AttributeRow], records: Sequence[dict[str, Any]], vocab) -> list[FixChange]:
    """One change per image that shows a contaminant without naming it."""
    by_id = {r["id"]: r for r in records}
    changes: dict[str, FixChange] = {}
    for row in rows:
        if row.verdict != CONTAMINANT:
            continue
        for image in row.present_unnamed:
            record = by_id.get(image)
            if record is None or not record.get("caption_text"):
                continue  # an uncaptioned image needs a caption first, not one phrase
            change = changes.get(image)
            if change is None:
                cap = caption_of(record, vocab)
                change = changes[image] = FixChange(image, record.get("caption_text") or "", "", cap)
            if add_phrase(change.caption, row.phrase, "objective"):
                change.added.append(row.phrase)
    out = []
    for change in changes.values():
        change.after = compose(change.caption)
        if change.added and change.after != change.before:
            out.append(change)
    return out


def format_diff(changes: Sequence[FixChange]) -> str:
    """'- old' / '+ new' caption lines per image."""
    lines = []
    for ch in changes:
        lines += [f"{ch.image}: adds {', '.join(ch.added)}", f"  - {ch.before}", f"  + {ch.after}"]
    return "\n".join(lines)


def apply_fixes(dataset_dir: Path | str, records: list[dict[str, Any]], changes: Sequence[FixChange]) -> str:
    """Store the new captions (history kept, one op id), rewrite manifest and sidecars; returns the op id."""
    from lorastudio.data.manifest import write_manifest, write_sidecar

    op = new_op_id()
    by_id = {r["id"]: r for r in records}
    touched = []
    for ch in changes:
        record = by_id[ch.image]
        source = new_source("audit-fix", params={"added": list(ch.added)}, op=op)
        if set_caption(record, ch.caption, source):
            touched.append(record)
    write_manifest(dataset_dir, records)
    for record in touched:
        write_sidecar(dataset_dir, record)
    return op
