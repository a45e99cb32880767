"""Token budget with the shipped CLIP-style tokenizer, as a folder and as a model layout."""

from __future__ import annotations

import shutil

import pytest

from lorastudio.captions.tokens import TokenizerNotFound, find_tokenizer_dirs, load_tokenizers, token_report
from lorastudio.models.tiny import tokenizer_files_dir


def test_token_report_counts_flags_and_splits_trigger(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tokenizer_files_dir(), model / "tokenizer")
    shutil.copytree(tokenizer_files_dir(), model / "tokenizer_2")
    assert [name for name, _ in find_tokenizer_dirs(model)] == ["tokenizer", "tokenizer_2"]
    tokenizers = load_tokenizers(model)
    long_text = "ohwx_kfood_style, " + ", ".join(["sprinkled with sesame seeds"] * 20)
    records = [
        {"id": "short", "caption_text": "ohwx_kfood_style, a photo of kimchi"},
        {"id": "long", "caption_text": long_text},
        {"id": "none", "caption_text": None},
    ]
    report = token_report(records, tokenizers, trigger="ohwx_kfood_style")
    assert report.limits == {"tokenizer": 75, "tokenizer_2": 75}
    assert set(report.counts) == {"short", "long"}
    assert report.counts["short"]["tokenizer"] < 75 < report.counts["long"]["tokenizer"]
    assert [(rid, name) for rid, name, _ in report.over] == [("long", "tokenizer"), ("long", "tokenizer_2")]
    pieces = report.trigger_tokens["tokenizer"]
    assert len(pieces) > 1 and "".join(pieces).replace("</w>", "") == "ohwx_kfood_style"


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerNotFound, match="tokenizer/"):
        find_tokenizer_dirs(tmp_path)
    assert find_tokenizer_dirs(tokenizer_files_dir())[0][1] == tokenizer_files_dir()
