"""`audit --fix`: name each contaminant in slot 4 of the images that show it unnamed.

Only confident calls reach `present_unnamed` (see `lorastudio.audit.contamination`), and
the plan adds nothing that contradicts the caption: no attribute whose opposite the
caption names (or that this fix would also add), and no second value of an exclusive
group the caption already fills ("black background" beside "white background"). Each
added phrase carries the detector's evidence, shown in the diff.

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
from lorastudio.audit.detectors import opposites_of
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
    evidence: dict[str, str] = field(default_factory=dict)


def _conflicts(attr_id: str, named: set[str], vocab) -> bool:
    """True when a caption naming `named` would contradict itself by adding `attr_id`."""
    if named & opposites_of(attr_id):
        return True
    attr = vocab.by_id(attr_id)
    if not attr.exclusive or attr.kind != "objective":
        return False
    return any(vocab.by_id(other).group == attr.group for other in named if other != attr_id)


def plan_fixes(rows: Sequence[AttributeRow], records: Sequence[dict[str, Any]], vocab) -> list[FixChange]:
    """One change per image that confidently shows a contaminant its caption does not name."""
    by_id = {r["id"]: r for r in records}
    wanted: dict[str, list[AttributeRow]] = {}
    for row in rows:
        if row.verdict != CONTAMINANT:
            continue
        for image in row.present_unnamed:
            record = by_id.get(image)
            if record is None or not record.get("caption_text"):
                continue  # an uncaptioned image needs a caption first, not one phrase
            wanted.setdefault(image, []).append(row)
    out = []
    for image, image_rows in wanted.items():
        record = by_id[image]
        named = vocab.mentions(record.get("caption_text") or "")
        adding = {r.id for r in image_rows}
        change = FixChange(image, record.get("caption_text") or "", "", caption_of(record, vocab))
        for row in image_rows:
            if _conflicts(row.id, named | (adding - {row.id}), vocab):
                continue
            if add_phrase(change.caption, row.phrase, "objective"):
                change.added.append(row.phrase)
                change.evidence[row.phrase] = row.evidence.get(image, "")
        change.after = compose(change.caption)
        if change.added and change.after != change.before:
            out.append(change)
    return out


def format_diff(changes: Sequence[FixChange]) -> str:
    """'- old' / '+ new' caption lines per image, each added phrase with its evidence."""
    lines = []
    for ch in changes:
        lines.append(f"{ch.image}: adds {', '.join(ch.added)}")
        lines += [f"  why {phrase}: {ch.evidence[phrase]}" for phrase in ch.added if ch.evidence.get(phrase)]
        lines += [f"  - {ch.before}", f"  + {ch.after}"]
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
