"""Pixel detectors on synthetic food scenes with planted confounders and clean controls.

Recall and precision are measured two ways over the fixed `benchmark_datasets()` set:
per image (every attribute the pixel detector can report) and per dataset (the
contaminant verdicts of the full audit). Both must be at least 0.9.
"""

from __future__ import annotations

import numpy as np
import pytest

import audit_scenes as scenes
from lorastudio.audit import audit_dataset
from lorastudio.audit.detectors import pixel


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float]:
    return tp / max(tp + fn, 1), tp / max(tp + fp, 1)


@pytest.fixture(scope="module")
def audited(tmp_path_factory, vocab):
    root = tmp_path_factory.mktemp("scenes")
    out = []
    for ds in scenes.benchmark_datasets():
        path = scenes.write_dataset(root, ds, vocab)
        out.append((ds, audit_dataset(path, vocab=vocab)))
    return out


def test_per_image_recall_and_precision(vocab):
    ids = set(pixel.label_ids(vocab).values())
    tp = fp = fn = 0
    labels = pixel.label_ids(vocab)
    for ds in scenes.benchmark_datasets():
        for spec in ds.scenes:
            scores = pixel.classify(pixel.measure(np.asarray(scenes.render(spec), dtype=np.float32) / 255.0))
            seen = {labels[k] for k, p in scores.items() if p >= 0.5 and k in labels}
            planted = spec.planted() & ids
            tp, fp, fn = tp + len(seen & planted), fp + len(seen - planted), fn + len(planted - seen)
    recall, precision = _prf(tp, fp, fn)
    print(f"\npixel detectors per image: recall {recall:.3f} precision {precision:.3f} (tp={tp} fp={fp} fn={fn})")
    assert recall >= 0.9 and precision >= 0.9


def test_planted_contaminants_found_at_dataset_level(audited):
    tp = fp = fn = 0
    for ds, result in audited:
        found = {r.id for r in result.contamination if r.verdict == "contaminant"}
        expected = ds.expected_contaminants()
        tp, fp, fn = tp + len(found & expected), fp + len(found - expected), fn + len(expected - found)
    recall, precision = _prf(tp, fp, fn)
    print(f"\ncontaminants per dataset: recall {recall:.3f} precision {precision:.3f} (tp={tp} fp={fp} fn={fn})")
    assert tp >= 12
    assert recall >= 0.9 and precision >= 0.9


def test_clean_controls_have_no_errors(audited):
    for ds, result in audited:
        if not ds.expected_contaminants():
            assert not result.has_errors, (ds.name, [f.message for f in result.findings if f.severity == "error"])


def test_constant_subjective_look_is_a_style_constant(audited):
    result = dict((ds.name, r) for ds, r in audited)["warm_constant"]
    row = next(r for r in result.contamination if r.id == "cast.warm")
    assert row.verdict == "style constant" and row.present_rate == 1.0 and row.mention_rate == 0.0
    assert any(f.rule == "contamination.style_constant" and f.severity == "info" for f in result.findings)


def test_contaminant_row_lists_the_unnamed_images(audited):
    ds, result = next((d, r) for d, r in audited if d.name == "black_bg")
    row = next(r for r in result.contamination if r.id == "bg.black")
    planted = [f"black_bg-{i:03d}" for i, s in enumerate(ds.scenes) if "bg.black" in s.planted()]
    assert row.present_unnamed == planted
    assert row.present_rate == pytest.approx(len(planted) / len(ds.scenes))


def test_unreadable_image_becomes_a_note(tmp_path, vocab):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    ev = pixel.detect([bad], ["x"], vocab)
    assert all(np.isnan(p[0]) for p in ev.probs.values())
    assert any("could not read" in n for n in ev.notes)
