"""Detectors: what an image shows, as per-image probabilities for vocabulary attributes.

Every detector returns an `Evidence`: for each attribute id it covers, one probability per
image (NaN where it did not look). A detector that measured an image but found the
measurement undefined there (NaN too) says so in `looked`: that image is "cannot tell",
assessed like any other, not skipped. A probability is read as one of three calls:

- present: p >= `present_at` (the detector is confident the image shows it);
- absent: p <= `absent_below` (confident it does not);
- cannot tell: anything in between.

Only confident calls count in the contamination table and in `audit --fix`. Opposite
attributes (`OPPOSITES`) are never both present in one image: the pixel detectors measure
one signed value per axis, and when two witnesses disagree the image becomes "cannot tell".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CONFIDENT = 0.9
ABSENT = 0.1
# "More likely than not": kept for callers that only need a lean (evaluation metrics).
PRESENT = 0.5
SEEN, NOT_SEEN, CANNOT_TELL = 1, -1, 0

# Pairs of vocabulary ids that cannot both describe one image.
OPPOSITES: tuple[tuple[str, str], ...] = (
    ("cast.warm", "cast.cool"), ("cast.green", "cast.magenta"),
    ("light.high_key", "light.low_key"), ("grade.saturated", "grade.desaturated"),
    ("grade.high_contrast", "grade.low_contrast"), ("optics.shallow_dof", "optics.deep_focus"),
    ("bg.dark", "bg.light"), ("bg.black", "bg.white"), ("bgtype.plain", "bgtype.busy"),
)


def opposites_of(attr_id: str) -> set[str]:
    """The ids that contradict `attr_id`."""
    return {b for a, b in OPPOSITES if a == attr_id} | {a for a, b in OPPOSITES if b == attr_id}


@dataclass
class Evidence:
    """Per-image attribute probabilities from one detector.

    `named_by` lists, per attribute, other ids whose mention also counts as naming it
    (a caption that says "dark background" has named a black one). `present_at` and
    `absent_below` are the probabilities at which this detector's calls are confident.
    `details` holds, per attribute, a short per-image account of the measurement
    ("warm/cool axis +0.21 >= 0.12"), shown as the evidence for a `--fix` change.
    `looked` marks the images the detector measured (None: every image with a probability);
    a NaN probability on such an image is "cannot tell", so it stays in the denominator of
    the contamination table instead of raising the share of images that show an attribute.
    """

    source: str
    image_ids: list[str]
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    named_by: dict[str, tuple[str, ...]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    absent_below: float = ABSENT
    present_at: float = CONFIDENT
    details: dict[str, list[str]] = field(default_factory=dict)
    looked: np.ndarray | None = None

    def covered(self) -> list[str]:
        """Attribute ids for which at least one image has a probability."""
        return [a for a, p in self.probs.items() if np.isfinite(p).any()]

    def calls(self, attr_id: str) -> np.ndarray | None:
        """Per image: SEEN, NOT_SEEN, CANNOT_TELL, or NaN where the detector did not look."""
        probs = self.probs.get(attr_id)
        if probs is None:
            return None
        p = np.asarray(probs, dtype=np.float64)
        tol = 1e-6  # probabilities are stored as float32: 0.9 must still read as 0.9
        out = np.where(p >= self.present_at - tol, SEEN, np.where(p <= self.absent_below + tol, NOT_SEEN, CANNOT_TELL))
        unmeasured = np.nan if self.looked is None else np.where(self.looked, CANNOT_TELL, np.nan)
        return np.where(np.isfinite(p), out, unmeasured)

    def detail(self, attr_id: str, index: int) -> str:
        """The measurement behind one image's probability, or '' when the detector gave none."""
        rows = self.details.get(attr_id)
        return rows[index] if rows is not None and index < len(rows) else ""
