"""Image-to-image with a style LoRA, optionally held to the photo's layout by a canny ControlNet.

Inputs are decoded with the safe decoder (size limits, EXIF orientation applied), resized
with their aspect ratio kept to about `resolution**2` pixels (sides multiples of 8, what the
VAE needs), restyled, and scaled back to the photo's own upright size. Input files are only
ever read.

Edges are computed here without torchvision or OpenCV, as Canny does: Gaussian blur, Sobel
gradients, non-maximum suppression along the gradient direction, then hysteresis (weak
edges survive only when connected to strong ones). Thresholds are fractions of the
strongest gradient, so they do not depend on the image's contrast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAX_INPUT_BYTES = 100 * 1024 * 1024
SIZE_MULTIPLE = 8


def _convolve_separable(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    pad = len(kernel) // 2
    padded = np.pad(img, pad, mode="edge")
    rows = sum(k * padded[:, i:i + img.shape[1]] for i, k in enumerate(kernel))
    return sum(k * rows[i:i + img.shape[0], :] for i, k in enumerate(kernel))


def _sobel(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.pad(gray, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return gx, gy


def _non_max_suppression(mag: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Keep a pixel only where it is the maximum across the edge (4 quantised directions)."""
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    p = np.pad(mag, 1)
    h, w = mag.shape
    shifted = {  # (ahead, behind) neighbours for each direction bin
        0: (p[1:h + 1, 2:], p[1:h + 1, :w]),      # horizontal gradient: compare left/right
        45: (p[2:, 2:], p[:h, :w]),               # diagonal
        90: (p[2:, 1:w + 1], p[:h, 1:w + 1]),     # vertical gradient: compare up/down
        135: (p[2:, :w], p[:h, 2:]),              # anti-diagonal
    }
    bins = np.select([(angle < 22.5) | (angle >= 157.5), angle < 67.5, angle < 112.5], [0, 45, 90], 135)
    keep = np.zeros_like(mag, dtype=bool)
    for b, (ahead, behind) in shifted.items():
        sel = bins == b
        keep |= sel & (mag >= ahead) & (mag >= behind)
    return np.where(keep, mag, 0.0)


def _hysteresis(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """Grow strong edges into 8-connected weak ones until nothing changes."""
    edges = strong.copy()
    while True:
        p = np.pad(edges, 1)
        grown = np.zeros_like(edges)
        for dy in range(3):
            for dx in range(3):
                grown |= p[dy:dy + edges.shape[0], dx:dx + edges.shape[1]]
        grown &= weak | strong
        if (grown == edges).all():
            return edges
        edges = grown


def canny_edges(image: Any, low: float = 0.1, high: float = 0.25, sigma: float = 1.0) -> np.ndarray:
    """A Canny edge map (uint8, 0 or 255) of a PIL image; thresholds are fractions of the peak gradient."""
    gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    radius = max(1, int(round(2 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    blurred = _convolve_separable(gray, kernel / kernel.sum())
    gx, gy = _sobel(blurred)
    thin = _non_max_suppression(np.hypot(gx, gy), gx, gy)
    peak = float(thin.max())
    if peak <= 1e-6:
        return np.zeros(gray.shape, dtype=np.uint8)
    edges = _hysteresis(thin >= high * peak, thin >= low * peak)
    return edges.astype(np.uint8) * 255


def working_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """About `resolution**2` pixels with the photo's aspect ratio, sides multiples of 8."""
    scale = resolution / (width * height) ** 0.5
    return (max(SIZE_MULTIPLE, int(round(width * scale / SIZE_MULTIPLE)) * SIZE_MULTIPLE),
            max(SIZE_MULTIPLE, int(round(height * scale / SIZE_MULTIPLE)) * SIZE_MULTIPLE))


def load_photo(path: Path) -> Any:
    """Decode a photo safely (size limits, EXIF orientation applied) to an upright RGB image."""
    from lorastudio.data.images import DecodeError, DecodeLimits, decode_image

    path = Path(path)
    size = path.stat().st_size
    if size > MAX_INPUT_BYTES:
        raise ValueError(f"{path}: {size} bytes is over the {MAX_INPUT_BYTES} byte limit")
    try:
        return decode_image(path.read_bytes(), DecodeLimits()).image
    except DecodeError as exc:
        raise ValueError(f"{path}: cannot decode ({exc})") from None


def side_by_side(before: Any, after: Any) -> Any:
    """Before | after on one canvas (same height)."""
    from PIL import Image

    canvas = Image.new("RGB", (before.width + after.width, max(before.height, after.height)), "white")
    canvas.paste(before, (0, 0))
    canvas.paste(after, (before.width, 0))
    return canvas


@dataclass(frozen=True)
class EnhanceSettings:
    """How to restyle: prompt, strength (0 = untouched, 1 = ignore the photo), sampling, control."""

    prompt: str
    negative_prompt: str = ""
    strength: float = 0.45
    steps: int = 30
    cfg: float = 6.0
    seed: int = 0
    resolution: int = 512
    control: str = "none"
    control_scale: float = 1.0


def enhance_image(pipe: Any, photo: Any, settings: EnhanceSettings, *, device: str) -> tuple[Any, Any | None]:
    """Restyle one upright photo; returns (result at the photo's size, edge map or None)."""
    import torch
    from PIL import Image

    w, h = working_size(photo.width, photo.height, settings.resolution)
    init = photo.resize((w, h), Image.LANCZOS)
    kwargs: dict[str, Any] = {}
    edges = None
    if settings.control == "canny":
        edges = Image.fromarray(canny_edges(init)).convert("RGB")
        kwargs.update(control_image=edges, controlnet_conditioning_scale=settings.control_scale)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    with torch.no_grad():
        out = pipe(prompt=settings.prompt, negative_prompt=settings.negative_prompt or None, image=init,
                   strength=settings.strength, num_inference_steps=settings.steps, guidance_scale=settings.cfg,
                   generator=generator, output_type="pil", **kwargs).images[0]
    return out.resize(photo.size, Image.LANCZOS), edges
