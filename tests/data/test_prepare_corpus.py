"""The bad-input corpus: every kind gets the right outcome, the run goes on, sources untouched."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from prepare_corpus import tree_digest


def _key(run, rel: str) -> str:
    return os.path.join(str(run.root), rel)


def test_corpus_has_at_least_20_kinds(corpus_run):
    assert len(corpus_run.expect) >= 20
    assert corpus_run.exit_code == 0, corpus_run.output


def test_every_input_gets_its_expected_outcome(corpus_run):
    manifest, rejected = corpus_run.manifest(), corpus_run.rejected()
    for rel, (outcome, detail) in corpus_run.expect.items():
        key = _key(corpus_run, rel)
        if outcome == "accepted":
            assert key in manifest, f"{rel} should be accepted; rejected as {rejected.get(key)}"
            if detail:
                assert detail in manifest[key]["flags"], f"{rel}: flags {manifest[key]['flags']} lack {detail}"
        else:
            assert key in rejected, f"{rel} should be rejected ({detail})"
            assert rejected[key]["reason"] == detail, f"{rel}: {rejected[key]}"
    # Nothing dropped silently: every walked input is in exactly one of the two files.
    assert set(manifest) | set(rejected) == {_key(corpus_run, rel) for rel in corpus_run.expect}
    assert not set(manifest) & set(rejected)


def test_sources_are_byte_identical_afterwards(corpus_run):
    assert tree_digest(corpus_run.root) == corpus_run.before


def test_duplicates_point_at_the_kept_image(corpus_run):
    manifest, rejected = corpus_run.manifest(), corpus_run.rejected()
    good = manifest[_key(corpus_run, "good.jpg")]
    assert rejected[_key(corpus_run, "good_copy.jpg")]["duplicate_of"] == good["id"]
    # The near-duplicate is smaller, so the larger original is the one kept.
    assert rejected[_key(corpus_run, "near_good.jpg")]["duplicate_of"] == good["id"]
    assert rejected[_key(corpus_run, "zz_link.webp")]["duplicate_of"] == manifest[_key(corpus_run, "photo.webp")]["id"]


def test_processed_images_are_8bit_rgb_at_their_bucket(corpus_run):
    for record in corpus_run.manifest().values():
        with Image.open(corpus_run.out / record["file"]) as im:
            assert im.mode == "RGB"
            assert im.size == (record["width"], record["height"])
        assert record["width"] % 64 == 0 and record["height"] % 64 == 0
        assert record["width"] * record["height"] <= 512 * 512
        x0, y0, x1, y1 = record["crop"]
        assert 0 <= x0 < x1 <= record["orig_width"] and 0 <= y0 < y1 <= record["orig_height"]


def test_exif_rotation_is_baked_into_pixels(corpus_run):
    record = corpus_run.manifest()[_key(corpus_run, "phone.jpg")]
    # Stored 400x300 landscape, orientation 6 = displayed rotated 90 degrees clockwise.
    assert (record["orig_width"], record["orig_height"]) == (300, 400)
    with Image.open(corpus_run.out / record["file"]) as im:
        pixels = np.asarray(im)
    # The red stored top-left corner is now at the top-right.
    top_right = pixels[:20, -20:].reshape(-1, 3).mean(axis=0)
    top_left = pixels[:20, :20].reshape(-1, 3).mean(axis=0)
    assert top_right[0] > 200 and top_right[1] < 60
    assert not (top_left[0] > 200 and top_left[1] < 60)


def test_alpha_and_animation_and_greyscale_are_normalised(corpus_run):
    manifest = corpus_run.manifest()
    with Image.open(corpus_run.out / manifest[_key(corpus_run, "palette_alpha.png")]["file"]) as im:
        left = np.asarray(im)[:, :100].reshape(-1, 3).mean(axis=0)
    assert left.min() > 240  # transparent half composited on the white default background
    with Image.open(corpus_run.out / manifest[_key(corpus_run, "animated.gif")]["file"]) as im:
        mean = np.asarray(im).reshape(-1, 3).mean(axis=0)
    assert mean[1] > 150 and mean[2] < 50  # first (green) frame
    with Image.open(corpus_run.out / manifest[_key(corpus_run, "grey16.png")]["file"]) as im:
        arr = np.asarray(im).astype(int)
    assert arr.max() > 150  # 16-bit range scaled down, not clipped to white or black
    assert np.array_equal(arr[..., 0], arr[..., 1])


def test_captions_repeats_and_sidecars(corpus_run):
    manifest = corpus_run.manifest()
    top = manifest[_key(corpus_run, "10_food/top.jpg")]
    assert top["repeats"] == 10
    assert top["caption_text"] == "a photo of bibimbap"
    assert (corpus_run.out / top["file"]).with_suffix(".txt").read_text().strip() == "a photo of bibimbap"
    assert manifest[_key(corpus_run, "10_food/3_side/deep.png")]["repeats"] == 3
    kor = manifest[_key(corpus_run, "kor.jpg")]
    assert kor["caption_text"] is None
    assert manifest[_key(corpus_run, "good.jpg")]["repeats"] == 1


def test_report_is_offline_and_lists_everything(corpus_run):
    html = (corpus_run.out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html
    for record in corpus_run.manifest().values():
        assert record["file"] in html
    for source, row in corpus_run.rejected().items():
        assert row["reason"] in html
    assert "Buckets" in html and "576x448" in html
