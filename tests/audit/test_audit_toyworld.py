"""The pixel detectors on toy-world datasets (lorastudio.toyworld) with planted backgrounds.

Each planted dataset puts every scene on one background and leaves it out of the captions;
controls name it, or vary the background so no colour reaches --min-present. Scored on the
background attributes the pixel detectors cover (black, white, blue)."""

from __future__ import annotations

import random
from pathlib import Path

from lorastudio.audit import audit_dataset
from lorastudio.data.manifest import write_dataset_json, write_manifest, write_sidecar
from lorastudio.toyworld.scenes import BACKGROUND_PHRASES, golden_caption, random_spec, render

TRIGGER = "ohwx_kfood_style"
PLANTED = ("black", "white", "blue backdrop")


def _toy_dataset(root: Path, backgrounds: list[str], *, name_background: bool, seed: int) -> Path:
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True)
    records = []
    for i, background in enumerate(backgrounds):
        spec = random_spec(rng, background=background, lighting="neutral")
        caption = golden_caption(spec, TRIGGER)
        if not name_background:
            caption = caption.replace(", " + BACKGROUND_PHRASES[background], "")
        rid = f"toy{i:03d}"
        render(spec, 128, 128, seed=seed * 1000 + i).save(root / "images" / f"{rid}.png")
        rec = {"id": rid, "file": f"images/{rid}.png", "source": f"raw/{rid}.png", "sha256": f"{seed:032x}{i:032x}",
               "orig_width": 128, "orig_height": 128, "width": 128, "height": 128, "crop": [0, 0, 128, 128],
               "caption_text": caption}
        records.append(rec)
        write_sidecar(root, rec)
    write_manifest(root, records)
    write_dataset_json(root, {"trigger": TRIGGER})
    return root


def test_planted_toyworld_backgrounds_are_found(tmp_path, vocab):
    ids = {bg: vocab.match(BACKGROUND_PHRASES[bg]).id for bg in PLANTED}
    cases = []  # (dataset dir, expected contaminant ids)
    for k, bg in enumerate(PLANTED):
        cases.append((_toy_dataset(tmp_path / f"planted{k}", [bg] * 10, name_background=False, seed=k), {ids[bg]}))
        cases.append((_toy_dataset(tmp_path / f"named{k}", [bg] * 10, name_background=True, seed=10 + k), set()))
    mixed = [PLANTED[i % 3] for i in range(12)]
    cases.append((_toy_dataset(tmp_path / "mixed", mixed, name_background=False, seed=20), set()))
    tp = fp = fn = 0
    for root, expected in cases:
        result = audit_dataset(root, vocab=vocab)
        found = {r.id for r in result.contamination if r.verdict == "contaminant" and r.id in ids.values()}
        tp, fp, fn = tp + len(found & expected), fp + len(found - expected), fn + len(expected - found)
    recall, precision = tp / max(1, tp + fn), tp / max(1, tp + fp)
    print(f"\ntoy-world backgrounds: recall {recall:.3f} precision {precision:.3f} (tp={tp} fp={fp} fn={fn})")
    assert tp == 3 and recall >= 0.9 and precision >= 0.9
