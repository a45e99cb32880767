"""What a LoRA learned, in numbers: adherence, closeness to the data, contamination leak.

- Prompt adherence: CLIP score, 100 * max(cos(image, prompt), 0), when a CLIP model is given.
- Closeness to the training images: for each output, the cosine similarity to its nearest
  training image, averaged. Embeddings are CLIP image embeddings when a CLIP model is given,
  else a pixel-space proxy: the image shrunk to 16x16 RGB, mean-subtracted, L2-normalised
  (sensitive to palette, layout and tone, blind to semantics; compare it only with the base
  model's value from the same run).
- Contamination leak: the audit's pixel detectors (background colour, key, cast, ...) run
  on outputs of held-out prompts, which do not name the confounders. For each attribute
  present in most training images (or flagged by the dataset's audit), leak = how much more
  often it appears in LoRA outputs than in base-model outputs of the same prompts and seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PIXEL_SIDE = 16
CONFOUNDER_RATE = 0.5  # present in at least this share of training images
MAX_TRAIN_IMAGES = 256
AUDIT_VERDICTS = ("contaminant", "style or contaminant", "style constant")


def pixel_embedding(image: Any, side: int = PIXEL_SIDE) -> np.ndarray:
    """The documented pixel-space proxy embedding of a PIL image (unit vector)."""
    from PIL import Image

    small = image.convert("RGB").resize((side, side), Image.BILINEAR)
    vec = np.asarray(small, dtype=np.float32).reshape(-1) / 255.0
    vec = vec - vec.mean()
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 1e-8 else vec


class Embedder:
    """Image (and, with CLIP, text) embeddings; `kind` names which, for the report."""

    def __init__(self, clip_model: str | None = None, device: str = "cpu") -> None:
        self.kind = "pixel16"
        self.probe = None
        if clip_model:
            from lorastudio.captions.backends import get_backend
            from lorastudio.captions.vocab import load_vocabulary

            self.probe = get_backend("clip-probe", model=clip_model, device=device, vocab=load_vocabulary())
            self.kind = "clip"

    def images(self, images: Sequence[Any]) -> np.ndarray:
        """Unit-norm embeddings, one row per image."""
        if self.probe is not None:
            return self.probe.embed_images(list(images))
        return np.stack([pixel_embedding(im) for im in images]) if images else np.zeros((0, 3 * PIXEL_SIDE**2), np.float32)

    def clip_scores(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray | None:
        """CLIP score per (image, its prompt); None without a CLIP model."""
        if self.probe is None:
            return None
        img = self.probe.embed_images(list(images))
        txt = self.probe.embed_texts(list(prompts))
        return 100.0 * np.maximum((img * txt).sum(axis=1), 0.0)


def closeness(outputs: np.ndarray, training: np.ndarray) -> float:
    """Mean over outputs of the cosine similarity to the nearest training image."""
    if len(outputs) == 0 or len(training) == 0:
        return float("nan")
    return float((outputs @ training.T).max(axis=1).mean())


def training_images(run_cfg: dict[str, Any], limit: int = MAX_TRAIN_IMAGES) -> tuple[list[Any], list[Path]]:
    """Decoded training images of the run's datasets (safe decoder, paths kept inside each dataset)."""
    from PIL import Image

    from lorastudio.audit.detectors.measures import DETAIL
    from lorastudio.audit.detectors.pixel import load_thumbnail
    from lorastudio.data.manifest import read_manifest

    images, roots = [], []
    for entry in (run_cfg.get("data") or {}).get("datasets") or []:
        root = Path(entry["path"] if isinstance(entry, dict) else entry).resolve()
        if not (root / "manifest.jsonl").is_file():
            continue
        roots.append(root)
        for rec in read_manifest(root):
            path = (root / str(rec.get("file", ""))).resolve()
            # A manifest entry must not reach outside its dataset folder.
            if not path.is_relative_to(root) or not path.is_file() or len(images) >= limit:
                continue
            thumb = load_thumbnail(path, side=DETAIL)  # what the depth-of-field witness reads
            images.append(Image.fromarray((thumb * 255).round().astype(np.uint8)))
    return images, roots


def detect_attributes(images: Sequence[Any]) -> dict[str, np.ndarray]:
    """Pixel-detector label -> per-image probability (NaN where it cannot tell), each image
    measured at the scales `lorastudio audit` measures at, whatever its own size."""
    from lorastudio.audit.detectors.measures import pair_from_image
    from lorastudio.audit.detectors.pixel import classify, measure

    rows = [classify(measure(*pair_from_image(im))) for im in images]
    labels = list(rows[0]) if rows else []
    return {label: np.array([r[label] for r in rows], dtype=np.float32) for label in labels}


def presence_rate(probs: np.ndarray) -> float:
    """Share of images where the attribute is present (p >= 0.5), among those assessed."""
    from lorastudio.audit.detectors import PRESENT

    finite = probs[np.isfinite(probs)]
    return float((finite >= PRESENT).mean()) if finite.size else float("nan")


def audit_flagged_labels(dataset_roots: Sequence[Path]) -> dict[str, str]:
    """Detector labels whose attribute a dataset's audit.json calls a contaminant / style constant."""
    from lorastudio.audit.detectors.pixel import BG_COLOR_PHRASES, OTHER_PHRASES

    by_phrase = {phrase: label for label, phrase in {**BG_COLOR_PHRASES, **OTHER_PHRASES}.items()}
    flagged = {}
    for root in dataset_roots:
        path = root / "audit.json"
        if not path.is_file():
            continue
        try:
            rows = json.loads(path.read_text(encoding="utf-8")).get("contamination", [])
        except (json.JSONDecodeError, AttributeError):
            continue
        for row in rows:
            label = by_phrase.get(str(row.get("phrase", "")))
            if label and row.get("verdict") in AUDIT_VERDICTS:
                flagged[label] = f"audit: {row['verdict']}"
    return flagged


@dataclass
class Confounders:
    """Attributes that could leak: their training rate and why each one is watched."""

    train_rate: dict[str, float] = field(default_factory=dict)
    reason: dict[str, str] = field(default_factory=dict)

    def labels(self) -> list[str]:
        """Watched detector labels, sorted."""
        return sorted(self.reason)


def find_confounders(train_images: Sequence[Any], dataset_roots: Sequence[Path]) -> Confounders:
    """Attributes present in most training images, plus those the dataset audit flagged."""
    rates = {label: presence_rate(p) for label, p in detect_attributes(train_images).items()} if train_images else {}
    reason = {label: f"in {rate:.0%} of training images" for label, rate in rates.items()
              if math.isfinite(rate) and rate >= CONFOUNDER_RATE}
    for label, why in audit_flagged_labels(dataset_roots).items():
        reason[label] = f"{reason[label]}; {why}" if label in reason else why
    return Confounders(train_rate=rates, reason=reason)


def leak(lora_images: Sequence[Any], base_rates: dict[str, float], confounders: Confounders) -> dict[str, float]:
    """Per watched attribute: presence rate in LoRA outputs minus the base model's."""
    probs = detect_attributes(lora_images)
    out = {}
    for label in confounders.labels():
        lora_rate = presence_rate(probs[label]) if label in probs else float("nan")
        out[label] = round(lora_rate - base_rates.get(label, float("nan")), 4)
    return out


def base_rates(base_images: Sequence[Any], confounders: Confounders) -> dict[str, float]:
    """Presence rate of each watched attribute in the base model's outputs."""
    probs = detect_attributes(base_images)
    return {label: presence_rate(probs[label]) for label in confounders.labels() if label in probs}
