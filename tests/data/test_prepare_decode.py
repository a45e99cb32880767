"""Safe decode and quality signals, on generated images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lorastudio.data.images import DecodeError, DecodeLimits, decode_image, parse_color
from lorastudio.data.quality import blur_score, exposure, exposure_flags, hamming, near_duplicate_pairs, phash
from prepare_corpus import jpeg_bytes, photo, png_bomb


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(DecodeError) as err:
        decode_image(png_bomb(20_000, 20_000), DecodeLimits(max_pixels=64_000_000))
    assert err.value.reason == "too_many_pixels"
    data = jpeg_bytes(photo(400, 300))
    with pytest.raises(DecodeError) as err:
        decode_image(data, DecodeLimits(max_pixels=100_000))
    assert err.value.reason == "too_many_pixels"
    with pytest.raises(DecodeError) as err:
        decode_image(data, DecodeLimits(max_bytes=1000))
    assert err.value.reason == "file_too_large"


def test_jpeg_draft_decodes_only_what_is_needed():
    data = jpeg_bytes(photo(1600, 1200, seed=3))
    full = decode_image(data, DecodeLimits())
    small = decode_image(data, DecodeLimits(), need=lambda w, h: (380, 290))
    assert full.image.size == (1600, 1200)
    assert small.image.size == (400, 300)  # 1/4 scale still covers 380x290
    assert (small.width, small.height) == (1600, 1200) and small.scale == 0.25
    # Same picture: the draft matches a high-quality downscale of the full decode.
    ref = np.asarray(full.image.resize((400, 300), Image.Resampling.BOX), dtype=float)
    assert np.abs(np.asarray(small.image, dtype=float) - ref).mean() < 6


def test_background_colour_is_used_for_alpha():
    im = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    out = decode_image(buf.getvalue(), DecodeLimits(), background=parse_color("#102030"))
    assert out.image.getpixel((10, 10)) == (16, 32, 48)
    assert "alpha_composited" in out.flags
    with pytest.raises(ValueError):
        parse_color("white")


def test_phash_survives_resize_and_recompression_but_separates_photos():
    a = photo(640, 480, seed=1)
    a_small = Image.open(io.BytesIO(jpeg_bytes(a.resize((320, 240)), quality=70)))
    b = photo(640, 480, seed=2)
    assert hamming(phash(a), phash(a_small)) <= 4
    assert hamming(phash(a), phash(b)) > 12
    pairs = near_duplicate_pairs([phash(a), phash(b), phash(a_small)], 6)
    assert [(i, j) for i, j, _ in pairs] == [(0, 2)]
    assert near_duplicate_pairs([phash(a), phash(a_small)], -1) == []


def test_blur_score_drops_for_blurred_images():
    sharp = photo(512, 512, seed=4)
    soft = sharp.filter(ImageFilter.GaussianBlur(5))
    assert blur_score(soft) < 0.02 < blur_score(sharp)
    # Contrast-normalised: a darker copy of the sharp photo scores about the same.
    darker = Image.fromarray((np.asarray(sharp, dtype=float) * 0.4).astype(np.uint8))
    assert blur_score(darker) == pytest.approx(blur_score(sharp), rel=0.2)


def test_exposure_flags_spare_dark_backgrounds_with_bright_food():
    black_bg = np.zeros((256, 256, 3), np.uint8)
    black_bg[96:160, 96:160] = 230  # bright dish on black: low mean, bright highlights
    assert exposure_flags(exposure(Image.fromarray(black_bg)), 40, 215) == []
    dim = Image.fromarray(np.full((256, 256, 3), 20, np.uint8))
    assert exposure_flags(exposure(dim), 40, 215) == ["underexposed"]
    blown = Image.fromarray(np.full((256, 256, 3), 250, np.uint8))
    assert exposure_flags(exposure(blown), 40, 215) == ["overexposed"]


def test_cmyk_jpeg_keeps_its_colours():
    original = photo(400, 300, seed=4)
    buf = io.BytesIO()
    original.convert("CMYK").save(buf, "JPEG", quality=92)
    out = decode_image(buf.getvalue(), DecodeLimits())
    assert out.image.mode == "RGB"
    assert np.abs(np.asarray(out.image, dtype=float) - np.asarray(original, dtype=float)).mean() < 8
