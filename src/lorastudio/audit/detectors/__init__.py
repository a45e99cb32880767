"""Detectors: what an image shows, as per-image probabilities for vocabulary attributes.

Every detector returns an `Evidence`: for each attribute id it covers, one probability per
image (NaN where it did not look). The contamination table reads presence (p >= PRESENT)
and confident absence (p <= ABSENT, used to spot captions that name what is not there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PRESENT = 0.5
ABSENT = 0.05


@dataclass
class Evidence:
    """Per-image attribute probabilities from one detector.

    `named_by` lists, per attribute, other ids whose mention also counts as naming it
    (a caption that says "dark background" has named a black one). `absent_below` is the
    probability under which this detector counts as sure an attribute is absent.
    """

    source: str
    image_ids: list[str]
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    named_by: dict[str, tuple[str, ...]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    absent_below: float = ABSENT

    def covered(self) -> list[str]:
        """Attribute ids for which at least one image has a probability."""
        return [a for a, p in self.probs.items() if np.isfinite(p).any()]
