"""The manual backend: captions from CSV, JSONL, a sidecar folder, or sidecars next to sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorastudio.captions.backends import BackendError, RecordCaptionBackend, get_backend
from lorastudio.captions.run import CaptionOptions, caption_dataset
from lorastudio.data.manifest import read_manifest


def _run(dataset: Path, vocab, src: Path | None, **opts):
    backend = get_backend("manual", model=None, vocab=vocab, options={"from": str(src)} if src else {})
    assert isinstance(backend, RecordCaptionBackend)
    return caption_dataset(dataset, backend, vocab, CaptionOptions(**opts), progress=False)


def test_csv_matches_by_source_name_processed_file_and_id(dataset, vocab, tmp_path):
    table = tmp_path / "caps.csv"
    table.write_text(
        "File,Caption\n"
        "IMG_000.png,\"ohwx_kfood_style, a photo of 양념치킨, close-up, black background\"\n"
        "images/img001.png,\"a photo of tteokbokki, on a white plate\"\n"
        "img002,\"overhead flat lay, glossy\"\n",
        encoding="utf-8")
    summary = _run(dataset, vocab, table, trigger="ohwx_kfood_style")
    assert summary.captioned == ["img000", "img001", "img002"]
    assert summary.no_output == ["img003", "img004", "img005"]
    by_id = {r["id"]: r for r in read_manifest(dataset)}
    assert by_id["img000"]["caption_text"] == ("ohwx_kfood_style, a photo of yangnyeom chicken (korean fried chicken "
                                               "in sweet spicy glaze), close-up, black background")
    assert by_id["img001"]["caption"]["objective"] == ["on a white plate"]
    assert by_id["img002"]["caption_text"] == "ohwx_kfood_style, overhead flat lay, glossy"
    assert by_id["img000"]["caption_source"]["backend"] == "manual"
    assert "caption_text" not in by_id["img003"] or not by_id["img003"]["caption_text"]


def test_jsonl_table(dataset, vocab, tmp_path):
    table = tmp_path / "caps.jsonl"
    rows = [{"file": f"IMG_{i:03d}.png", "caption": f"a photo of kimchi, parsley, dish {i}"} for i in range(6)]
    table.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    summary = _run(dataset, vocab, table, trigger="sks")
    assert len(summary.captioned) == 6
    rec = read_manifest(dataset)[5]
    assert rec["caption"] == {"trigger": "sks", "subject": "a photo of kimchi", "shot": [], "objective": ["parsley"],
                              "style": [], "unplaced": ["dish 5"]}


def test_sidecars_next_to_sources_and_in_a_folder(dataset, vocab, tmp_path):
    records = read_manifest(dataset)
    for rec in records[:2]:
        Path(rec["source"]).with_suffix(".txt").write_text("ohwx, a photo of bibimbap, dolsot\n", encoding="utf-8")
    Path(records[2]["source"]).with_suffix(".caption").write_text("ohwx, a photo of naengmyeon", encoding="utf-8")
    summary = _run(dataset, vocab, None)
    assert summary.captioned == ["img000", "img001", "img002"]
    by_id = {r["id"]: r for r in read_manifest(dataset)}
    assert by_id["img000"]["caption"]["trigger"] == "ohwx"
    assert by_id["img000"]["caption"]["objective"] == ["dolsot"]

    folder = tmp_path / "sidecars"
    folder.mkdir()
    (folder / "IMG_004.txt").write_text("ohwx, a photo of japchae", encoding="utf-8")
    summary = _run(dataset, vocab, folder)
    assert summary.captioned == ["img004"]


def test_bad_tables_fail_with_file_and_line(tmp_path, vocab):
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("path,text\na.png,x\n", encoding="utf-8")
    with pytest.raises(BackendError, match="bad.csv.*'file' and 'caption'"):
        get_backend("manual", vocab=vocab, options={"from": str(bad_csv)})
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"file": "a.png", "caption": "x"}\n{oops\n', encoding="utf-8")
    with pytest.raises(BackendError, match=r"bad.jsonl:2"):
        get_backend("manual", vocab=vocab, options={"from": str(bad_jsonl)})
    with pytest.raises(BackendError, match="unknown caption backend 'nope'"):
        get_backend("nope", vocab=vocab)
