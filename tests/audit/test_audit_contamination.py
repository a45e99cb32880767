"""Contamination table: tagger evidence, hallucinated captions, thresholds, verdicts."""

from __future__ import annotations

import numpy as np

from lorastudio.audit import audit_dataset
from lorastudio.audit.contamination import contamination_findings, contamination_table
from lorastudio.audit.detectors import Evidence
from lorastudio.data.manifest import read_manifest, write_manifest

T = "ohwx_kfood_style"
BASE = f"{T}, a photo of yangnyeom chicken, close-up shot, on a white ceramic plate, neutral lighting"


def _evidence(attr_id, values, source="test"):
    return Evidence(source, [f"i{k}" for k in range(len(values))], {attr_id: np.array(values, dtype=np.float32)})


def test_verdicts_follow_present_and_mention_rates(vocab):
    ids = [f"i{k}" for k in range(10)]
    present = [0.9] * 7 + [0.0] * 3
    unnamed = [set() for _ in ids]
    named = [{"bg.black"} for _ in ids]
    row = contamination_table(vocab, ids, unnamed, [_evidence("bg.black", present)])[0]
    assert (row.verdict, row.present_rate, row.mention_rate) == ("contaminant", 0.7, 0.0)
    assert row.present_unnamed == ids[:7]
    assert contamination_table(vocab, ids, named, [_evidence("bg.black", present)])[0].verdict == "ok"
    # Under the threshold: common, but not common enough to be absorbed as "the style".
    low = contamination_table(vocab, ids, unnamed, [_evidence("bg.grey", present)], min_present=0.8)[0]
    assert low.verdict == "ok" and low.min_present == 0.8
    # A pack's own threshold wins over the global one (food.korean sets 0.5 for bg.black).
    assert contamination_table(vocab, ids, unnamed, [_evidence("bg.black", present)], min_present=0.8)[0].min_present == 0.5


def test_named_by_alternative_counts_as_named(vocab):
    ids = ["i0", "i1", "i2"]
    ev = _evidence("bg.black", [1.0, 1.0, 1.0])
    ev.named_by = {"bg.black": ("bg.dark",)}
    rows = contamination_table(vocab, ids, [{"bg.dark"}] * 3, [ev])
    assert rows[0].verdict == "ok" and rows[0].present_unnamed == []


def test_hallucinated_mention_is_flagged(vocab):
    ids = ["i0", "i1", "i2", "i3"]
    rows = contamination_table(vocab, ids, [{"bg.white"}, set(), set(), set()], [_evidence("bg.white", [0.0, 0.0, 0.3, 0.0])])
    assert rows[0].named_absent == ["i0"]
    hits = [f for f in contamination_findings(rows) if f.rule == "caption.hallucination"]
    assert [(f.image, f.severity) for f in hits] == [("i0", "warning")]
    # An uncertain detector (0.3) is no proof of absence.
    rows = contamination_table(vocab, ids, [set(), set(), {"bg.white"}, set()], [_evidence("bg.white", [0.0, 0.0, 0.3, 0.0])])
    assert rows[0].named_absent == []


def test_partly_named_is_a_warning(vocab):
    ids = [f"i{k}" for k in range(10)]
    mentions = [{"bg.black"}] * 6 + [set()] * 4
    rows = contamination_table(vocab, ids, mentions, [_evidence("bg.black", [1.0] * 8 + [0.0] * 2)])
    assert rows[0].verdict == "ok"
    hits = [f for f in contamination_findings(rows) if f.rule == "contamination.partly_named"]
    assert len(hits) == 1 and hits[0].severity == "warning" and "i6, i7" in hits[0].fix


def test_tagger_tags_are_a_witness(text_dataset, vocab):
    ds = text_dataset([BASE] * 4)
    records = read_manifest(ds)
    for i, rec in enumerate(records):
        rec["caption_source"] = {"backend": "tagger", "model": "wd-tiny"}
        rec["tags"] = [["black_background", 0.92], ["food", 0.8]] if i < 3 else [["white_background", 0.9]]
    write_manifest(ds, records)
    result = audit_dataset(ds, vocab=vocab, pixel=False)
    row = next(r for r in result.contamination if r.id == "bg.black")
    assert row.sources == ["tagger"] and row.verdict == "contaminant" and row.present_unnamed == ["img000", "img001", "img002"]
    assert result.has_errors


def test_no_tagger_evidence_without_tagger_captions(text_dataset, vocab):
    ds = text_dataset([BASE] * 3)
    records = read_manifest(ds)
    for rec in records:
        rec["tags"] = [["black_background", 0.99]]  # stored tags, but not captioned by a tagger
    write_manifest(ds, records)
    result = audit_dataset(ds, vocab=vocab, pixel=False)
    assert result.contamination == [] and result.facts["detectors"] == []


def test_pixel_detector_flags_a_caption_naming_the_wrong_background(tmp_path, vocab):
    import audit_scenes as scenes

    spec = scenes.DatasetSpec("wrong_bg", [scenes.SceneSpec(bg="black", seed=i) for i in range(3)] +
                              [scenes.SceneSpec(bg="grey", seed=9)])
    ds = scenes.write_dataset(tmp_path, spec, vocab)
    records = read_manifest(ds)
    records[0]["caption_text"] = records[0]["caption_text"].replace("black background", "white background")
    write_manifest(ds, records)
    result = audit_dataset(ds, vocab=vocab)
    hits = [f for f in result.findings if f.rule == "caption.hallucination"]
    assert [(f.image, "white background" in f.message) for f in hits] == [("wrong_bg-000", True)]


def test_fix_plan_skips_uncaptioned_images(vocab):
    from lorastudio.audit.contamination import AttributeRow
    from lorastudio.audit.fix import plan_fixes

    row = AttributeRow("bg.black", "black background", "background.color", "objective", ["pixel"], 3, 1.0, 0.0, 0.6,
                       "contaminant", present_unnamed=["a", "b", "c"])
    records = [{"id": "a", "caption_text": BASE}, {"id": "b", "caption_text": None},
               {"id": "c", "caption_text": BASE + ", black background"}]
    changes = plan_fixes([row], records, vocab)
    assert [c.image for c in changes] == ["a"]
    assert changes[0].after.startswith(T) and "black background" in changes[0].after
