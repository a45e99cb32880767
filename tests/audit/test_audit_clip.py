"""CLIP zero-shot evidence with a tiny real CLIPModel, and the embedding cache."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lorastudio.audit import audit_dataset
from lorastudio.audit.detectors import clip

T = "ohwx_kfood_style"
CAPTION = f"{T}, a photo of yangnyeom chicken, close-up shot, grey background, neutral lighting"
BUILDER = Path(__file__).resolve().parents[1] / "captions" / "backends" / "tiny_caption_models.py"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    if not BUILDER.is_file():
        pytest.skip("tiny CLIP builder (tests/captions/backends) not present")
    spec = importlib.util.spec_from_file_location("audit_tiny_caption_models", BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_clip(tmp_path_factory.mktemp("clip"))


def _notes(result):
    return [f.message for f in result.findings if f.rule == "detector.note" and f.message.startswith("clip:")]


def test_clip_evidence_and_cache(text_dataset, vocab, tiny_clip):
    ds = text_dataset([CAPTION] * 4)
    result = audit_dataset(ds, vocab=vocab, model=str(tiny_clip), pixel=False)
    source = f"clip:{tiny_clip}"
    assert result.facts["detectors"] == [source]
    rows = {r.id: r for r in result.contamination}
    # Every vocabulary attribute is scored by the zero-shot probe, on every image.
    assert len(rows) > 100 and all(r.sources == [source] and r.assessed == 4 for r in rows.values())
    assert _notes(result) == ["clip: encoded 4 image(s), 0 from the cache"]
    cache = clip.cache_path(ds, str(tiny_clip))
    assert cache.is_file()

    again = audit_dataset(ds, vocab=vocab, model=str(tiny_clip), pixel=False)
    assert _notes(again) == ["clip: encoded 0 image(s), 4 from the cache"]
    assert [r.to_dict() for r in again.contamination] == [r.to_dict() for r in result.contamination]

    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(ds / "images" / "img002.png")
    changed = audit_dataset(ds, vocab=vocab, model=str(tiny_clip), pixel=False)
    assert _notes(changed) == ["clip: encoded 1 image(s), 3 from the cache"]


def test_cache_is_per_model(tmp_path):
    assert clip.cache_path(tmp_path, "a") != clip.cache_path(tmp_path, "b")
    assert clip.cache_path(tmp_path, "a").suffix == ".safetensors"


def test_cli_model_option(text_dataset, tiny_clip):
    import json

    from click.testing import CliRunner

    from lorastudio.cli.main import cli

    ds = text_dataset([CAPTION] * 3)
    res = CliRunner().invoke(cli, ["audit", str(ds), "--model", str(tiny_clip), "--format", "json", "-q"])
    data = json.loads(res.stdout)
    assert f"clip:{tiny_clip}" in data["detectors"] and "pixel" in data["detectors"]
    assert res.exit_code == (1 if data["counts"]["error"] else 0)
