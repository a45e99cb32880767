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


@pytest.fixture(scope="module")
def sharp_clip(tiny_clip, tmp_path_factory):
    """The tiny CLIP with a very large logit scale: its zero-shot softmax is one-hot, so every
    option it does not pick is confidently absent (p < 0.01), whatever the pixels show."""
    import math

    import torch
    from transformers import CLIPModel, CLIPProcessor

    out = tmp_path_factory.mktemp("sharp_clip")
    model = CLIPModel.from_pretrained(str(tiny_clip))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1e4))
    model.save_pretrained(out)
    CLIPProcessor.from_pretrained(str(tiny_clip)).save_pretrained(out)
    return out


LOOK_IDS = {"warm": "cast.warm", "cool": "cast.cool"}


def _look_dataset(root: Path, vocab, look: str) -> Path:
    """6 of 10 images with `look` planted (unnamed in the captions), on a named grey backdrop:
    enough images that a look in 60% of them cannot be a style constant (see
    `contamination.share_upper_bound`), so without CLIP it is a contaminant."""
    import audit_scenes as scenes

    specs = [scenes.SceneSpec(bg="grey", effects=(look,), seed=s) for s in range(6)]
    specs += [scenes.SceneSpec(bg="grey", seed=s) for s in range(6, 10)]
    return scenes.write_dataset(root, scenes.DatasetSpec(f"{look}_look", specs, {LOOK_IDS[look]}), vocab)


def _disputed_look(tmp_path, vocab, model: str) -> tuple[str, Path]:
    """The look (warm or cool) the pixels see in all 6 planted images and the CLIP says is absent there."""
    from lorastudio.audit.detectors import NOT_SEEN, SEEN, pixel

    for look, attr in LOOK_IDS.items():
        ds = _look_dataset(tmp_path, vocab, look)
        paths = sorted((ds / "images").glob("*.png"))
        ids = [p.stem for p in paths]
        pixel_calls = pixel.detect(paths, ids, vocab).calls(attr)[:6]
        clip_calls = clip.detect(ds, paths, ids, vocab, model).calls(attr)[:6]
        assert (pixel_calls == SEEN).all(), (look, pixel_calls)
        if (clip_calls == NOT_SEEN).all():
            return look, ds
    raise AssertionError("the sharp tiny CLIP agreed with the pixels on both casts; pick another seed")


def test_clip_disagreeing_with_pixels_is_cannot_tell_and_fix_writes_nothing(tmp_path, vocab, sharp_clip):
    """Two witnesses that disagree make the image "cannot tell", not a vote: without --model
    the planted cast is a contaminant --fix would name; with a CLIP that says it is absent it
    is undecided in those images and --fix --yes leaves every caption without it."""
    from click.testing import CliRunner

    from lorastudio.audit.contamination import CONTAMINANT
    from lorastudio.cli.main import cli
    from lorastudio.data.manifest import read_manifest

    look, ds = _disputed_look(tmp_path, vocab, str(sharp_clip))
    attr = LOOK_IDS[look]
    phrase = vocab.by_id(attr).phrase
    alone = {r.id: r for r in audit_dataset(ds, vocab=vocab).contamination}
    assert alone[attr].verdict == CONTAMINANT and alone[attr].present_rate == 0.6
    dry = CliRunner().invoke(cli, ["audit", str(ds), "--fix", "-q"], catch_exceptions=False)
    assert f"adds {phrase}" in dry.output

    both = {r.id: r for r in audit_dataset(ds, vocab=vocab, model=str(sharp_clip)).contamination}
    row = both[attr]
    assert row.sources == ["pixel", f"clip:{sharp_clip}"]
    assert row.present_rate == 0.0 and row.verdict != CONTAMINANT and row.decided <= 4  # only the unplanted four
    # CLIP is the only witness for objects and garnish: the pixels do not look at them.
    garnish = [r for r in both.values() if r.group == "garnish"]
    assert garnish and all(r.sources == [f"clip:{sharp_clip}"] for r in garnish)

    before = {r["id"]: r["caption_text"] for r in read_manifest(ds)}
    res = CliRunner().invoke(cli, ["audit", str(ds), "--model", str(sharp_clip), "--fix", "--yes", "-q"],
                             catch_exceptions=False)
    assert f"adds {phrase}" not in res.output
    after = {r["id"]: r["caption_text"] for r in read_manifest(ds)}
    assert all(phrase not in text for text in after.values())
    assert all(phrase not in (ds / "images" / f"{i}.txt").read_text() for i in after)
    assert set(after) == set(before)
