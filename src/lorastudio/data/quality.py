"""Image quality signals: content hashes, perceptual hashes, blur and exposure.

All of it is plain numpy on small greyscale copies, so it runs inside the prepare workers at
a few milliseconds per image.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

PHASH_SIZE = 32  # the DCT input side; the hash keeps the 8x8 lowest frequencies
ANALYSIS_SIDE = 512  # blur is measured at this long side so scores compare across sizes


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of the original file bytes (the dataset's identity for a source)."""
    return hashlib.sha256(data).hexdigest()


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    mat = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    mat[0] /= np.sqrt(2.0)
    return mat


_DCT = _dct_matrix(PHASH_SIZE)


def phash(image: Image.Image) -> int:
    """64-bit perceptual hash: signs of the 8x8 low DCT frequencies against their median.

    Robust to resizing, recompression and small colour changes; two hashes within a few
    bits of each other are the same picture.
    """
    grey = image.convert("L").resize((PHASH_SIZE, PHASH_SIZE), Image.Resampling.BOX)
    pixels = np.asarray(grey, dtype=np.float64)
    freq = _DCT @ pixels @ _DCT.T
    low = freq[:8, :8].flatten()
    bits = low > np.median(low[1:])  # the DC term is left out of the median: it is just brightness
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return value


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()


def _analysis_grey(image: Image.Image) -> np.ndarray:
    grey = image.convert("L")
    long_side = max(grey.size)
    if long_side > ANALYSIS_SIDE:
        factor = ANALYSIS_SIDE / long_side
        size = (max(1, round(grey.width * factor)), max(1, round(grey.height * factor)))
        grey = grey.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.float32) / 255.0


def blur_score(image: Image.Image) -> float:
    """Variance of the Laplacian divided by the image's own variance (contrast-normalised).

    Plain Laplacian variance also drops for dark or low-contrast photos; dividing by the
    intensity variance makes the score about edges, not exposure. Lower = blurrier.
    """
    grey = _analysis_grey(image)
    if grey.shape[0] < 3 or grey.shape[1] < 3:
        return 0.0
    lap = (
        grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1]
    )
    contrast = float(grey.var())
    if contrast < 1e-6:
        return 0.0  # a flat image has no edges at all
    return float(lap.var()) / contrast


@dataclass(frozen=True)
class Exposure:
    """Mean luminance and the 5th / 95th percentiles, all in 0..255."""

    mean: float
    p05: float
    p95: float


def exposure(image: Image.Image) -> Exposure:
    """Luminance statistics of an image (on a small copy)."""
    small = image.convert("L")
    if max(small.size) > 256:
        small = small.reduce(max(1, max(small.size) // 256))
    values = np.asarray(small, dtype=np.float32)
    p05, p95 = np.percentile(values, [5, 95])
    return Exposure(mean=float(values.mean()), p05=float(p05), p95=float(p95))


def exposure_flags(stats: Exposure, dark_mean: float, bright_mean: float) -> list[str]:
    """`underexposed` / `overexposed` flags.

    A food shot on a black background has a low mean but bright highlights, so a low mean
    alone is not enough: the highlights (p95) must be dim too. The same logic mirrors for
    white backgrounds and the shadows (p05).
    """
    flags = []
    if stats.mean < dark_mean and stats.p95 < 2.5 * dark_mean:
        flags.append("underexposed")
    if stats.mean > bright_mean and stats.p05 > 255.0 - 2.5 * (255.0 - bright_mean):
        flags.append("overexposed")
    return flags


def near_duplicate_pairs(hashes: list[int], threshold: int) -> list[tuple[int, int, int]]:
    """All (i, j, distance) with i < j and Hamming distance <= threshold."""
    if threshold < 0 or len(hashes) < 2:
        return []
    values = np.array(hashes, dtype=np.uint64)
    pairs: list[tuple[int, int, int]] = []
    for i in range(len(values) - 1):
        dist = np.bitwise_count(values[i + 1 :] ^ values[i])
        for offset in np.nonzero(dist <= threshold)[0]:
            pairs.append((i, i + 1 + int(offset), int(dist[offset])))
    return pairs
