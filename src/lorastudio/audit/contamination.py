"""Style contamination: what the images show against what the captions say.

For every attribute some detector looked at: `present_rate` (share of assessed images where
a detector sees it), `mention_rate` (share of captions naming it, synonyms included), the
images where it is present but unnamed, the images whose caption names it while every
detector is confident it is absent, and a verdict. Only confident calls count (see
`lorastudio.audit.detectors`): an image no witness is sure about, or where witnesses
disagree, or where an attribute and its opposite both came out present, is "cannot tell"
and counts as not present, so a contaminant is never reported on a guess.

- `contaminant`: present in at least `min_present` of the images and named in fewer than
  half of them; the trigger will absorb it;
- `style constant`: a subjective attribute present in (nearly) every image; it may be the
  very look the LoRA should own, so the user decides;
- `style or contaminant`: a subjective attribute that would be a contaminant, but present in
  so many of the images the detectors could judge that, with that few judged, a style
  constant cannot be ruled out (the 90% upper bound of its share reaches
  STYLE_CONSTANT_RATE): a warning, not an ERROR, and `--fix` leaves it to the user;
- `ok`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lorastudio.audit.detectors import CANNOT_TELL, NOT_SEEN, OPPOSITES, SEEN, Evidence
from lorastudio.audit.rules import Finding
from lorastudio.captions.vocab import DEFAULT_MIN_PRESENT, Vocabulary

STYLE_CONSTANT_RATE = 0.9
NAMED_ENOUGH = 0.5
CONTAMINANT = "contaminant"
STYLE_CONSTANT = "style constant"
STYLE_OR_CONTAMINANT = "style or contaminant"
OK = "ok"
Z90 = 1.645  # one-sided 95% (two-sided 90%) normal quantile for the share's upper bound


def share_upper_bound(k: int, n: int, z: float = Z90) -> float:
    """Wilson score upper bound of a share seen k times in n (1.0 when n is 0)."""
    if n <= 0:
        return 1.0
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return float(min(1.0, centre + half))


@dataclass
class AttributeRow:
    """The contamination figures for one attribute."""

    id: str
    phrase: str
    group: str
    kind: str
    sources: list[str]
    assessed: int
    present_rate: float
    mention_rate: float
    min_present: float
    verdict: str
    present_unnamed: list[str] = field(default_factory=list)
    named_absent: list[str] = field(default_factory=list)
    decided: int = 0
    evidence: dict[str, str] = field(default_factory=dict)
    present: list[str] = field(default_factory=list)  # every image a detector confidently sees it in

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (rates rounded to 4 places)."""
        d = asdict(self)
        d["present_rate"] = round(self.present_rate, 4)
        d["mention_rate"] = round(self.mention_rate, 4)
        return d


def _combine(evidences: Sequence[Evidence], attr_id: str, n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per image: looked at by some witness, and the combined call (SEEN / NOT_SEEN / CANNOT_TELL).

    A call is confident only when at least one witness is confident and no witness is
    confident the other way: two witnesses that disagree make the image "cannot tell".
    """
    stacks, sources = [], []
    for ev in evidences:
        calls = ev.calls(attr_id)
        if calls is not None and np.isfinite(calls).any():
            stacks.append(calls)
            sources.append(ev.source)
    if not stacks:
        return np.zeros(n, bool), np.zeros(n, np.int8), []
    arr = np.stack(stacks)
    seen = np.isfinite(arr)
    pos = (np.where(seen, arr, 0) == SEEN).any(axis=0)
    neg = (np.where(seen, arr, 0) == NOT_SEEN).any(axis=0)
    call = np.where(pos & ~neg, SEEN, np.where(neg & ~pos, NOT_SEEN, CANNOT_TELL)).astype(np.int8)
    return seen.any(axis=0), call, sources


def combined_calls(evidences: Sequence[Evidence], attr_ids: Sequence[str], n: int) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """`_combine` for every id, then opposite attributes both present in one image become "cannot tell"."""
    out = {a: _combine(evidences, a, n) for a in attr_ids}
    for a, b in OPPOSITES:
        if a in out and b in out:
            both = (out[a][1] == SEEN) & (out[b][1] == SEEN)
            out[a][1][both] = CANNOT_TELL
            out[b][1][both] = CANNOT_TELL
    return out


def _evidence_text(evidences: Sequence[Evidence], attr_id: str, index: int) -> str:
    parts = [f"{ev.source}: {ev.detail(attr_id, index)}" for ev in evidences if ev.detail(attr_id, index)]
    return "; ".join(parts)


def _rivals(vocab: Vocabulary, attr) -> set[str]:
    """Other values of the same exclusive objective group (empty for other attributes)."""
    if not attr.exclusive or attr.kind != "objective":
        return set()
    return {a.id for a in vocab.groups().get(attr.group, []) if a.id != attr.id}


def _named_by(evidences: Sequence[Evidence], attr_id: str) -> set[str]:
    ids = {attr_id}
    for ev in evidences:
        ids.update(ev.named_by.get(attr_id, ()))
    return ids


def contamination_table(vocab: Vocabulary, image_ids: Sequence[str], mentions: Sequence[set[str]],
                        evidences: Sequence[Evidence], min_present: float = DEFAULT_MIN_PRESENT) -> list[AttributeRow]:
    """One row per attribute that at least one detector assessed, worst verdicts first.

    `min_present` applies to attributes whose pack keeps the default threshold; a pack that
    sets its own `min_present` for an attribute wins.
    """
    n = len(image_ids)
    covered = sorted({a for ev in evidences for a in ev.covered()})
    calls = combined_calls(evidences, covered, n)
    rows = []
    for attr_id in covered:
        attr = vocab.by_id(attr_id)
        seen, call, sources = calls[attr_id]
        present, absent = call == SEEN, call == NOT_SEEN
        assessed = int(seen.sum())
        if assessed == 0:
            continue
        names = _named_by(evidences, attr_id)
        named = np.array([bool(m & names) for m in mentions], dtype=bool)
        # A caption that gives an objective, exclusive attribute another value ("grey
        # background" where the pixels read black after a low-key grade) has described it:
        # that is a disagreement to look at, not an unnamed contaminant (and --fix would
        # not add a second value anyway).
        rivals = _rivals(vocab, attr)
        described = np.array([bool(m & rivals) for m in mentions], dtype=bool) & ~named
        threshold = attr.min_present if attr.min_present != DEFAULT_MIN_PRESENT else min_present
        # Only confident calls count: an image a detector cannot tell about is not "present".
        present_rate = float(present.sum()) / assessed
        unnamed = np.flatnonzero(present & ~named & ~described)
        named_share = float((present & (named | described)).sum()) / max(int(present.sum()), 1)
        decided = int((present | absent).sum())
        # A look in (nearly) every image the detectors could judge is a style constant, even
        # when some images were "cannot tell".
        sure_rate = float(present.sum()) / decided if decided * 2 >= assessed and decided else 0.0
        if attr.kind == "subjective" and sure_rate >= STYLE_CONSTANT_RATE:
            verdict = STYLE_CONSTANT
        elif present_rate >= threshold and named_share < NAMED_ENOUGH:
            # 16 of 18 judged images is 89%, and a style constant all the same as far as 18
            # images can tell: an ERROR there would block a run on a guess.
            maybe_style = (attr.kind == "subjective" and decided * 2 >= assessed
                           and share_upper_bound(int(present.sum()), decided) >= STYLE_CONSTANT_RATE)
            verdict = STYLE_OR_CONTAMINANT if maybe_style else CONTAMINANT
        else:
            verdict = OK
        rows.append(AttributeRow(
            id=attr_id, phrase=attr.phrase, group=attr.group, kind=attr.kind, sources=sources, assessed=assessed,
            present_rate=present_rate, mention_rate=float(named.mean()) if n else 0.0,
            min_present=threshold, verdict=verdict, present_unnamed=[image_ids[i] for i in unnamed],
            named_absent=[image_ids[i] for i in np.flatnonzero(absent & np.array([attr_id in m for m in mentions]))],
            decided=decided,
            evidence={image_ids[i]: _evidence_text(evidences, attr_id, int(i)) for i in unnamed},
            present=[image_ids[i] for i in np.flatnonzero(present)],
        ))
    order = {CONTAMINANT: 0, STYLE_OR_CONTAMINANT: 1, STYLE_CONSTANT: 2, OK: 3}
    rows.sort(key=lambda r: (order[r.verdict], -r.present_rate, r.id))
    return rows


def _ids(ids: Sequence[str], limit: int = 6) -> str:
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def contamination_findings(rows: Sequence[AttributeRow]) -> list[Finding]:
    """Findings from the table: contaminants, partly named attributes, style constants, hallucinations."""
    out = []
    for r in rows:
        where = (f"confidently present in {r.present_rate:.0%} of images (by {', '.join(r.sources)}; "
                 f"{r.assessed - r.decided} cannot tell), named in {r.mention_rate:.0%} of captions")
        if r.verdict == CONTAMINANT:
            out.append(Finding("contamination.contaminant", "error", None,
                               f"'{r.phrase}' ({r.id}) is {where}: the trigger will absorb it",
                               f"name '{r.phrase}' in slot 4 of {_ids(r.present_unnamed)} "
                               "(`lorastudio audit --fix --yes` does this)"))
        elif r.verdict == STYLE_OR_CONTAMINANT:
            out.append(Finding("contamination.style_or_contaminant", "warning", None,
                               f"'{r.phrase}' ({r.id}) is {where}: in so many of the {r.decided} images the "
                               "detectors could judge that it may be the style itself, or a contaminant",
                               f"if it is not the style you teach, name '{r.phrase}' in slot 4 of "
                               f"{_ids(r.present_unnamed)}; if it is, leave it unnamed"))
        elif r.verdict == STYLE_CONSTANT:
            effect = ("naming it everywhere may pull that look away from the trigger" if r.mention_rate >= NAMED_ENOUGH
                      else "left unnamed, the trigger will learn it as part of the style")
            out.append(Finding("contamination.style_constant", "info", None,
                               f"'{r.phrase}' ({r.id}) is {where}: a style constant; {effect}",
                               "your choice: leave it unnamed if it is the style you teach, name it if it is not"))
        elif r.present_unnamed and r.present_rate >= r.min_present:
            out.append(Finding("contamination.partly_named", "warning", None,
                               f"'{r.phrase}' ({r.id}) is {where}; unnamed in {len(r.present_unnamed)} images",
                               f"name '{r.phrase}' in slot 4 of {_ids(r.present_unnamed)}"))
        for image in r.named_absent:
            out.append(Finding("caption.hallucination", "warning", image,
                               f"the caption names '{r.phrase}' but {', '.join(r.sources)} is confident it is absent",
                               f"check the image; remove '{r.phrase}' if it is not there"))
    return out
