"""Bucketing follows kohya sd-scripts' rules (reference/captioning.md, "kohya bucketing")."""

from __future__ import annotations

import pytest

from lorastudio.data.buckets import BucketSpec, bucket_list, crop_loss, make_buckets, nearest_bucket, no_upscale_bucket, place


def test_sd15_bucket_list_matches_kohya_algorithm():
    # Worked by hand from make_bucket_resolutions((512, 512), 256, 1024, 64).
    expected = [
        (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576), (512, 512),
        (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256), (1024, 256),
    ]
    assert make_buckets(512, 256, 1024, 64) == expected
    assert bucket_list(BucketSpec(resolution=512)) == expected  # defaults: min 256, max 1024


def test_sdxl_buckets_contain_the_familiar_sizes():
    buckets = make_buckets(1024, 512, 2048, 64)
    for size in [(1024, 1024), (1152, 896), (896, 1152), (1216, 832), (1344, 768), (1536, 640), (640, 1536)]:
        assert size in buckets


@pytest.mark.parametrize("resolution", [512, 768, 1024])
def test_every_bucket_respects_area_step_and_side_limits(resolution):
    lo, hi = resolution // 2, resolution * 2
    for w, h in make_buckets(resolution, lo, hi, 64):
        assert w * h <= resolution * resolution
        assert w % 64 == 0 and h % 64 == 0
        if (w, h) != (resolution, resolution):
            assert lo <= w <= hi and lo <= h <= hi


def test_nearest_aspect_and_cover_crop():
    buckets = make_buckets(512)
    assert nearest_bucket(4000, 3000, buckets) == (576, 448)
    assert nearest_bucket(3000, 4000, buckets) == (448, 576)
    assert nearest_bucket(1000, 1000, buckets) == (512, 512)
    placed = place(4000, 3000, BucketSpec(resolution=512))
    x0, y0, x1, y1 = placed.crop
    # Scaled to cover: the full height is used, the sides are trimmed equally (to within
    # two bucket pixels, since kohya's crop offset is a whole number of resized pixels).
    assert (y0, round(y1)) == (0, 3000)
    assert abs(x0 - (4000 - x1)) <= 2.0 / placed.scale
    assert abs((x1 - x0) / (y1 - y0) - 576 / 448) < 1e-3
    assert 0 < crop_loss(placed, 4000, 3000) < 0.05
    assert not placed.upscaled


def test_small_images_are_upscaled_unless_disabled():
    assert place(300, 300, BucketSpec(resolution=512)).upscaled
    placed = place(300, 300, BucketSpec(resolution=512, upscale=False))
    assert placed.bucket == (256, 256) and not placed.upscaled


def test_no_upscale_follows_kohya_including_its_known_small_bucket():
    spec = BucketSpec(resolution=1024, upscale=False)
    # sd-scripts PR #2352 (issue #731): kohya picks 960x960 for a 3072x3000 photo. Same here.
    assert no_upscale_bucket(3072, 3000, spec) == (960, 960)
    # Under the area cap: keep the size, floor each side to the step.
    assert no_upscale_bucket(500, 400, BucketSpec(resolution=512, upscale=False)) == (448, 384)
    # Over the cap: 700x500 shrinks to ~538x384 (height snapped first fits the aspect best).
    assert no_upscale_bucket(700, 500, BucketSpec(resolution=512, upscale=False)) == (512, 384)
    w, h = no_upscale_bucket(6000, 4000, spec)
    assert w * h <= 1024 * 1024 and w % 64 == 0 and h % 64 == 0 and w > h


def test_square_mode_uses_one_bucket():
    spec = BucketSpec(resolution=512, square=True)
    assert bucket_list(spec) == [(512, 512)]
    assert place(4000, 1000, spec).bucket == (512, 512)
