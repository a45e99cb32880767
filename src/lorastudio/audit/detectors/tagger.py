"""Tagger evidence: the tags a WD-style tagger stored when it captioned the dataset.

Only records captioned with the `tagger` backend count (caption_source.backend ==
"tagger"). Their tags are read from the record's `tags` field, either a list of
[tag, score] pairs or a {tag: score} mapping, and mapped to attributes through the
vocabulary's tagger aliases. A tag the tagger did not output is not proof of absence (it
may sit just under the threshold), so such images get a low but not confident probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lorastudio.audit.detectors import Evidence

NOT_TAGGED = 0.2
# WD taggers are trained as per-tag classifiers; a stored score of 0.5 or more is the tag's
# own "yes" (NOT_TAGGED stays "cannot tell", never proof of absence).
TAG_PRESENT = 0.5


def _tags(record: dict[str, Any]) -> dict[str, float]:
    raw = record.get("tags") or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    out: dict[str, float] = {}
    for item in pairs:
        try:
            tag, score = item
            out[str(tag)] = float(score)
        except (TypeError, ValueError):
            continue
    return out


def detect(records: Sequence[dict[str, Any]], vocab) -> Evidence | None:
    """Evidence from stored tagger tags, or None when no record was captioned by a tagger."""
    tagged = [(record.get("caption_source") or {}).get("backend") == "tagger" for record in records]
    if not any(tagged):
        return None
    n = len(records)
    probs: dict[str, np.ndarray] = {}
    covered = {a.id for a in vocab.attributes if a.tagger_aliases}
    for attr_id in covered:
        arr = np.full(n, np.nan, dtype=np.float32)
        arr[np.array(tagged)] = NOT_TAGGED
        probs[attr_id] = arr
    for i, record in enumerate(records):
        if not tagged[i]:
            continue
        for tag, score in _tags(record).items():
            attr = vocab.by_tag(tag)
            if attr is None:
                continue
            probs.setdefault(attr.id, np.full(n, np.nan, dtype=np.float32))
            current = probs[attr.id][i]
            probs[attr.id][i] = max(score, current if np.isfinite(current) else 0.0)
    return Evidence("tagger", [r["id"] for r in records], probs, present_at=TAG_PRESENT)
