"""Bulk edits: each one changes the right captions, keeps history, can be undone, dry-runs."""

from __future__ import annotations

from lorastudio.captions.edit import (
    add_to_slot,
    apply_edit,
    find_replace,
    phrase_diff,
    phrase_stats,
    remove_from_slots,
    rename_trigger,
)
from lorastudio.captions.history import undo_last
from lorastudio.captions.slots import parse
from lorastudio.data.manifest import read_manifest, sidecar_path, write_manifest

TEXTS = [
    "ohwx, a photo of yangnyeom chicken, close-up, black background, sprinkled with sesame seeds, glossy",
    "ohwx, a photo of tteokbokki, overhead flat lay, black backdrop, on a white platter, glossy, masterpiece",
    "ohwx, a photo of bibimbap, 45-degree angle, in a dolsot, wooden table, masterpiece",
]


def _captioned(dataset, vocab):
    records = read_manifest(dataset)
    for record, text in zip(records, TEXTS):
        record["caption"] = parse(text, vocab).to_dict()
        record["caption_text"] = text
    write_manifest(dataset, records)
    return records


def test_caption_level_edits(vocab):
    cap = parse(TEXTS[1], vocab)
    assert rename_trigger(cap, "ohwx", "sks").trigger == "sks" and cap.trigger == "ohwx"
    added = add_to_slot(cap, "objective", "plain background")
    assert added.objective[-1] == "plain background"
    assert add_to_slot(added, "objective", "Plain Background").objective == added.objective
    assert remove_from_slots(cap, "black background").objective == cap.objective  # exact only
    assert "black backdrop" not in remove_from_slots(cap, "black background", vocab=vocab).objective
    assert find_replace(cap, "platter", "plate").objective == ["black backdrop", "on a white plate"]
    assert find_replace(cap, "^glossy$", "", regex=True).style == ["masterpiece"]


def test_apply_edit_writes_history_sidecars_and_undo(dataset, vocab):
    _captioned(dataset, vocab)
    result = apply_edit(dataset, lambda c: rename_trigger(c, "ohwx", "ohwx_kfood_style"), name="rename-trigger",
                        params={"old": "ohwx"})
    assert len(result.changes) == 3 and result.selected == 6
    records = read_manifest(dataset)
    assert records[0]["caption_text"].startswith("ohwx_kfood_style, a photo of yangnyeom chicken")
    assert records[0]["caption_history"][-1]["caption_text"] == TEXTS[0]
    assert records[0]["caption_source"]["params"]["edit"] == "rename-trigger"
    assert sidecar_path(dataset, records[0]).read_text(encoding="utf-8").startswith("ohwx_kfood_style, ")
    op, reverted = undo_last(records)
    assert len(reverted) == 3 and [r["caption_text"] for r in records[:3]] == TEXTS


def test_where_selects_by_vocabulary_synonym(dataset, vocab):
    _captioned(dataset, vocab)
    result = apply_edit(dataset, lambda c: add_to_slot(c, "objective", "plain background"), name="add-phrase",
                        params={}, where="black background", vocab=vocab)
    # "black backdrop" counts as black background; bibimbap has none
    assert [rid for rid, _, _ in result.changes] == ["img000", "img001"]
    assert read_manifest(dataset)[2]["caption_text"] == TEXTS[2]


def test_dry_run_changes_nothing(dataset, vocab):
    _captioned(dataset, vocab)
    before = (dataset / "manifest.jsonl").read_text(encoding="utf-8")
    result = apply_edit(dataset, lambda c: remove_from_slots(c, "masterpiece"), name="remove-phrase", params={},
                        dry_run=True)
    assert [rid for rid, _, _ in result.changes] == ["img001", "img002"]
    assert phrase_diff(*result.changes[0][1:]) == ["- masterpiece"]
    assert (dataset / "manifest.jsonl").read_text(encoding="utf-8") == before


def test_phrase_stats_counts_images_per_slot(dataset, vocab):
    records = _captioned(dataset, vocab)
    rows = {(r.slot, r.phrase): r for r in phrase_stats(records, vocab)}
    assert rows[("trigger", "ohwx")].images == 3
    assert rows[("style", "glossy")].images == 2
    assert rows[("objective", "black backdrop")].attribute == "bg.black"
    assert rows[("objective", "in a dolsot")].attribute == "vessel.dolsot"
