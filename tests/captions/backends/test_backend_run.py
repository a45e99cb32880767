"""The model backends through the real captioning run (lorastudio.captions.run)."""

from __future__ import annotations

import math

import numpy as np

import tiny_caption_models as tiny
from lorastudio.captions.backends import get_backend
from lorastudio.captions.run import CaptionOptions, caption_dataset
from lorastudio.captions.vocab import load_vocabulary
from lorastudio.data.manifest import read_manifest

TRIGGER = "ohwx_kfood_style"


def test_tagger_through_the_run_keeps_mapped_and_unmapped_tags(tmp_path):
    vocab = load_vocabulary(["food.korean"])
    tags = [("general", 9), ("black_background", 0), ("from_above", 0), ("food", 0)]
    scores = [0.9, 0.8, 0.7, 0.6]
    model = tiny.build_tagger(tmp_path / "wd", tags, np.zeros((3, len(tags))),
                              np.array([math.log(p / (1 - p)) for p in scores]))
    ds = tiny.write_dataset(tmp_path / "ds", tiny.sample_images(3))
    backend = get_backend("tagger", model=str(model), vocab=vocab)
    summary = caption_dataset(ds, backend, vocab, CaptionOptions(trigger=TRIGGER, batch_size=2), progress=False)
    assert len(summary.captioned) == 3
    for rec in read_manifest(ds):
        assert rec["caption_source"]["backend"] == "tagger"
        assert rec["caption"]["shot"] == [vocab.by_tag("from_above").phrase]
        assert rec["caption"]["objective"] == [vocab.by_tag("black_background").phrase]
        assert rec["caption"]["unplaced"] == ["food"]
        assert rec["caption_text"].startswith(TRIGGER + ", ")
        assert "general" not in rec["caption_text"]  # ratings never reach the caption
        assert (ds / "images" / f"{rec['id']}.txt").read_text(encoding="utf-8").strip() == rec["caption_text"]


def test_blip_through_the_run_batches_like_single(tmp_path, blip_dir):
    vocab = load_vocabulary(["core.photo"])
    backend = get_backend("hf-caption", model=str(blip_dir), vocab=vocab, options={"max_new_tokens": 6})
    texts = {}
    for batch_size in (1, 4):
        ds = tiny.write_dataset(tmp_path / f"ds{batch_size}", tiny.sample_images(4))
        caption_dataset(ds, backend, vocab, CaptionOptions(trigger=TRIGGER, batch_size=batch_size), progress=False)
        records = read_manifest(ds)
        assert all(r["caption_source"]["model"] == str(blip_dir.resolve()) for r in records)
        texts[batch_size] = [r["caption_text"] for r in records]
    assert texts[1] == texts[4]
    assert all(t.startswith(TRIGGER) for t in texts[4])


def test_caption_cli_with_tagger_options(tmp_path):
    from click.testing import CliRunner

    from lorastudio.cli.main import cli

    tags = [("black_background", 0), ("no_humans", 0), ("food", 0)]
    model = tiny.build_tagger(tmp_path / "wd", tags, np.zeros((3, 3)), np.array([2.0, 2.0, 0.0]))  # .88 .88 .5
    ds = tiny.write_dataset(tmp_path / "ds", tiny.sample_images(2))
    args = ["caption", str(ds), "--backend", "tagger", "--model", str(model), "--trigger", TRIGGER, "--quiet",
            "--option", "general_threshold=0.6", "--option", "exclude_tags=[no_humans]"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    for rec in read_manifest(ds):
        assert rec["caption_source"]["params"]["exclude_tags"] == ["no_humans"]
        assert rec["caption_text"] == f"{TRIGGER}, black background"  # food below 0.6, no_humans excluded
    bad = CliRunner().invoke(cli, [*args[:-4], "--option", "general_treshold=0.6"])
    assert bad.exit_code != 0
    assert "did you mean 'general_threshold'" in bad.output
