"""Aspect-ratio buckets, compatible with kohya sd-scripts.

The rules (see reference/captioning.md, "kohya bucketing"):
- `resolution` is an *area* cap: every bucket has w*h <= resolution**2.
- Sides are multiples of `step` (64) between `min_side` and `max_side`, plus the square bucket.
- An image goes to the bucket whose aspect ratio (w/h) is nearest, is scaled to *cover* it,
  and is centre-cropped.
- With `upscale=False` kohya's no-upscale rule applies instead: images over the area cap are
  shrunk to it (keeping their aspect), smaller ones keep their size, and the bucket is that
  size floored to the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BucketSpec:
    """How buckets are built; `min_side`/`max_side` default to resolution/2 and resolution*2."""

    resolution: int = 512
    step: int = 64
    min_side: int | None = None
    max_side: int | None = None
    square: bool = False
    upscale: bool = True

    @property
    def max_area(self) -> int:
        return self.resolution * self.resolution

    @property
    def side_range(self) -> tuple[int, int]:
        lo = self.min_side if self.min_side is not None else self.resolution // 2
        hi = self.max_side if self.max_side is not None else self.resolution * 2
        return lo, hi


@dataclass(frozen=True)
class Placement:
    """Where one image lands: the bucket size and the crop box in original upright pixels.

    `scale` is bucket pixels per original pixel; `crop` is fractional so the resampler can
    use it exactly; `crop_int` is the rounded box recorded in the manifest.
    """

    bucket: tuple[int, int]
    scale: float
    crop: tuple[float, float, float, float]

    @property
    def crop_int(self) -> list[int]:
        return [int(round(v)) for v in self.crop]

    @property
    def upscaled(self) -> bool:
        return self.scale > 1.0 + 1e-9


def make_buckets(resolution: int, min_side: int = 256, max_side: int = 1024, step: int = 64) -> list[tuple[int, int]]:
    """All (width, height) buckets for an area of `resolution**2`, sorted, as kohya builds them."""
    if step <= 0 or resolution < step:
        raise ValueError(f"resolution {resolution} must be at least the bucket step {step}")
    area = resolution * resolution
    found: set[tuple[int, int]] = set()
    square = (int(math.sqrt(area)) // step) * step
    found.add((square, square))
    for width in range(min_side, max_side + 1, step):
        height = min(max_side, ((area // width) // step) * step)
        if height >= min_side:
            found.add((width, height))
            found.add((height, width))
    return sorted(found)


def bucket_list(spec: BucketSpec) -> list[tuple[int, int]]:
    """The predefined buckets for `spec` (just the square one with `square=True`)."""
    side = (spec.resolution // spec.step) * spec.step
    if spec.square:
        return [(side, side)]
    lo, hi = spec.side_range
    return make_buckets(spec.resolution, lo, hi, spec.step)


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose w/h is nearest to the image's (absolute difference, as kohya; first wins ties)."""
    aspect = width / height
    return min(buckets, key=lambda b: abs(b[0] / b[1] - aspect))


def _round_to_step(value: float, step: int) -> int:
    # kohya rounds to whole pixels, then floors to the step (so 1036 px -> 1024, 1000 -> 960).
    pixels = int(value + 0.5)
    return pixels - pixels % step


def no_upscale_bucket(width: int, height: int, spec: BucketSpec) -> tuple[int, int]:
    """kohya's `--bucket_no_upscale` rule: shrink to the area cap if over it, floor to the step."""
    aspect = width / height
    if spec.square:
        side = min(width, height, spec.resolution)
        side -= side % spec.step
        return (side, side)
    if width * height > spec.max_area:
        fit_w = math.sqrt(spec.max_area * aspect)
        fit_h = spec.max_area / fit_w
        # Try snapping either side to the step and keep the choice whose aspect is closer.
        w_rounded = _round_to_step(fit_w, spec.step)
        h_for_w = _round_to_step(w_rounded / aspect, spec.step)
        h_rounded = _round_to_step(fit_h, spec.step)
        w_for_h = _round_to_step(h_rounded * aspect, spec.step)
        err_w = abs(w_rounded / h_for_w - aspect) if h_for_w else math.inf
        err_h = abs(w_for_h / h_rounded - aspect) if h_rounded else math.inf
        if err_w < err_h:
            size = (w_rounded, int(w_rounded / aspect + 0.5))
        else:
            size = (int(h_rounded * aspect + 0.5), h_rounded)
    else:
        size = (width, height)
    return (size[0] - size[0] % spec.step, size[1] - size[1] % spec.step)


def cover_crop(width: int, height: int, bucket: tuple[int, int]) -> Placement:
    """Scale (width, height) to cover `bucket`, centre-crop, and map the crop to original pixels."""
    bw, bh = bucket
    if width / height > bw / bh:
        scale = bh / height  # wider than the bucket: match heights, crop the sides
    else:
        scale = bw / width
    resized_w = int(width * scale + 0.5)
    resized_h = int(height * scale + 0.5)
    off_x = (max(resized_w, bw) - bw) // 2
    off_y = (max(resized_h, bh) - bh) // 2
    x0 = off_x / scale
    y0 = off_y / scale
    x1 = min(width, (off_x + bw) / scale)
    y1 = min(height, (off_y + bh) / scale)
    return Placement(bucket=(bw, bh), scale=scale, crop=(x0, y0, x1, y1))


def place(width: int, height: int, spec: BucketSpec, buckets: list[tuple[int, int]] | None = None) -> Placement:
    """Choose the bucket for an upright image and compute its crop (the whole bucketing step)."""
    if spec.upscale:
        bucket = nearest_bucket(width, height, buckets if buckets is not None else bucket_list(spec))
    else:
        bucket = no_upscale_bucket(width, height, spec)
        if bucket[0] < spec.step or bucket[1] < spec.step:
            raise ValueError(f"{width}x{height} is smaller than one bucket step ({spec.step} px)")
    return cover_crop(width, height, bucket)


def crop_loss(placement: Placement, width: int, height: int) -> float:
    """Fraction of the original picture area cut away by the crop (0 = nothing lost)."""
    x0, y0, x1, y1 = placement.crop
    return max(0.0, 1.0 - ((x1 - x0) * (y1 - y0)) / (width * height))
