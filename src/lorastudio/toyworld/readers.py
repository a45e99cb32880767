"""Attribute readers: recover a toy scene's attributes from its pixels (numpy only).

They are what the experiments use to score generated images (does the image show the
background the prompt asked for? the garnish? the gloss?). Each reader looks at a fixed
region in image-relative units, so it works at any size and after a VAE round trip:
- background: the outer frame (median colour + texture);
- vessel: a ring just inside the smallest vessel radius;
- dish: hue votes in the middle of the vessel;
- garnish: cream or green marks on the dish, outside the highlight zone;
- gloss: the specular highlight up-left of the centre vs the rest of the dish;
- lighting: overall brightness and warm tint relative to the background's own colour.
Accuracy on generator images and after the toy VAE is measured by `accuracy()` and quoted
in the README section of the toy world.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from lorastudio.toyworld.scenes import BACKGROUNDS, GLOSS_OFFSET, LIGHTING, WARM_TINT, random_spec, render

ATTRIBUTES = ("background", "vessel", "dish", "garnish", "gloss", "lighting")


@dataclass(frozen=True)
class SceneReading:
    """What the readers see in one image (same fields as SceneSpec)."""

    background: str
    vessel: str
    dish: str
    garnish: str
    gloss: bool
    lighting: str

    def to_dict(self) -> dict:
        """Plain-dict form for JSON files."""
        return asdict(self)


def _array(image: Image.Image | np.ndarray) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got an array of shape {arr.shape}")
    return arr


def _polar(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distance from the centre in units of the shorter side, plus x and y offsets."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    side = float(min(h, w))
    dx, dy = (xx - w / 2) / side, (yy - h / 2) / side
    return np.hypot(dx, dy), dx, dy


def _frame(arr: np.ndarray) -> np.ndarray:
    h, w = arr.shape[:2]
    k = max(2, min(h, w) // 12)
    return np.concatenate([arr[:k].reshape(-1, 3), arr[-k:].reshape(-1, 3),
                           arr[:, :k].reshape(-1, 3), arr[:, -k:].reshape(-1, 3)])


def read_background(image) -> str:
    """black, white, wooden table, marble or blue backdrop, from the outer frame."""
    px = _frame(_array(image))
    r, g, b = np.median(px, axis=0)
    lum = px.mean(axis=1)
    sat = (max(r, g, b) - min(r, g, b)) / max(r, g, b, 1.0)
    # Dim wood is as dark as black but keeps its saturation.
    if (r + g + b) / 3 < 50 and not (sat > 0.42 and r > 35):
        return "black"
    # The backdrop is a saturated blue (saturation ~0.7, ~0.55 under warm light); a pale
    # white or grey with a cool cast (saturation < 0.2) is not it.
    if b > r + 15 and b > g and sat > 0.35:
        return "blue backdrop"
    if sat > 0.42:
        return "wooden table"
    # Marble and a white backdrop share a colour under bright light; marble has veins.
    textured = np.mean(np.abs(lum - np.median(lum)) > 0.12 * max(np.median(lum), 1.0))
    return "marble" if textured > 0.12 else "white"


def read_vessel(image) -> str:
    """white plate, black bowl or wooden tray, from a ring inside the vessel's rim."""
    arr = _array(image)
    dist, _, _ = _polar(*arr.shape[:2])
    ring = arr[(dist > 0.29) & (dist < 0.345)]
    r, g, b = np.median(ring, axis=0)
    if (r + g + b) / 3 < 60:
        return "black bowl"
    sat = (max(r, g, b) - min(r, g, b)) / max(r, g, b, 1.0)
    return "wooden tray" if sat > 0.3 else "white plate"


def _dish_pixels(arr: np.ndarray, zone: float = 0.07) -> np.ndarray:
    dist, dx, dy = _polar(*arr.shape[:2])
    gloss_zone = np.hypot(dx - GLOSS_OFFSET * 0.39, dy - GLOSS_OFFSET * 0.39) < zone
    return arr[(dist < 0.2) & ~gloss_zone]


def unlit(arr: np.ndarray, lighting: str) -> np.ndarray:
    """Undo the scene's lighting (brightness factor and warm tint) so colours compare."""
    out = arr / LIGHTING[lighting]
    if lighting == "warm":
        out = out / np.array(WARM_TINT, np.float32)
    return out


def _green(px: np.ndarray) -> np.ndarray:
    """Green-onion pixels: clearly greener than red and blue."""
    r, g, b = px[:, 0], px[:, 1], px[:, 2]
    return (g > r + 30) & (g > b + 30)


def _cream(px: np.ndarray) -> np.ndarray:
    """Sesame-seed pixels: bright and nearly neutral once the lighting is undone."""
    r, b = np.maximum(px[:, 0], 1.0), px[:, 2]
    return (px.min(axis=1) > 165) & (b / r > 0.8)


def _dilate(mask: np.ndarray, k: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-k, k + 1):
        for dx in range(-k, k + 1):
            out |= np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    return out


def read_dish(image, lighting: str | None = None) -> str:
    """yangnyeom chicken (deep red), tteokbokki (orange) or bibimbap (tan mosaic)."""
    arr = unlit(_array(image), lighting or read_lighting(image))
    h, w = arr.shape[:2]
    dist, dx, dy = _polar(h, w)
    flat = arr.reshape(-1, 3)
    garnish = (_cream(flat) | _green(flat)).reshape(h, w)
    # Garnish marks and the colour halo a VAE smears around them say nothing about the dish.
    region = (dist < 0.2) & (np.hypot(dx - GLOSS_OFFSET * 0.39, dy - GLOSS_OFFSET * 0.39) >= 0.09)
    px = arr[region & ~_dilate(garnish, max(1, min(h, w) // 32))]
    if len(px) == 0:
        px = arr[region]
    r = np.maximum(px[:, 0], 1.0)
    gr, br = px[:, 1] / r, px[:, 2] / r
    reddish = px[:, 0] > 35
    red = np.sum(reddish & (gr < 0.33))
    orange = np.sum(reddish & (gr >= 0.33) & (gr < 0.62) & (br < 0.36))
    # Only colours that look like some dish vote; blurred mixtures in between do not.
    other = np.sum(reddish & (gr >= 0.62))
    return ("yangnyeom chicken", "tteokbokki", "bibimbap")[int(np.argmax([red, orange, other]))]


def read_garnish(image, lighting: str | None = None) -> str:
    """sesame seeds (cream marks), green onion (green marks) or none."""
    arr = _array(image)
    px = unlit(_dish_pixels(arr, zone=0.09), lighting or read_lighting(image))
    green = np.mean(_green(px))
    cream = np.mean(_cream(px))
    if green > 0.03 and green >= cream:
        return "green onion"
    return "sesame seeds" if cream > 0.03 else "none"


def read_gloss(image, lighting: str | None = None) -> bool:
    """True when a white highlight sits up-left of the centre, well above the dish around it."""
    arr = unlit(_array(image), lighting or read_lighting(image))
    dist, dx, dy = _polar(*arr.shape[:2])
    spot = np.hypot(dx - GLOSS_OFFSET * 0.39, dy - GLOSS_OFFSET * 0.39) < 0.035
    dish = arr[(dist < 0.2) & ~spot]
    low = dish.min(axis=1)
    # The dish's own tones, without garnish marks (sesame is as bright as a highlight).
    plain = ~(_cream(dish) | _green(dish))
    around = np.median(low[plain]) if np.any(plain) else np.median(low)
    return bool(arr[spot].min(axis=1).mean() - around > 50)


def read_lighting(image, background: str | None = None) -> str:
    """neutral, bright, dim or warm, from the frame's colour against the background's own."""
    px = _frame(_array(image))
    r, g, b = np.median(px, axis=0)
    if b > 0 and r / max(b, 1.0) > 1.22 * _rb(background or read_background(image)):
        return "warm"
    background = background or read_background(image)
    # Wood grain darkens the frame's median by about 10%.
    ref = np.array(BACKGROUNDS[background], np.float32).mean() * (0.9 if background == "wooden table" else 1.0)
    ratio = (r + g + b) / 3 / max(ref, 1.0)
    return "dim" if ratio < 0.78 else "bright" if ratio > 1.05 else "neutral"


def _rb(background: str) -> float:
    r, _, b = BACKGROUNDS[background]
    return r / b


def read_scene(image) -> SceneReading:
    """Every attribute of one image."""
    background = read_background(image)
    lighting = read_lighting(image, background)
    return SceneReading(background=background, vessel=read_vessel(image), dish=read_dish(image, lighting),
                        garnish=read_garnish(image, lighting), gloss=read_gloss(image, lighting), lighting=lighting)


def accuracy(n: int = 300, seed: int = 1, transform=None, size: int = 64) -> dict[str, float]:
    """Per-attribute accuracy of the readers on `n` random scenes (optionally transformed,
    e.g. by a VAE round trip: `transform(list_of_images) -> list_of_images`)."""
    rng = random.Random(seed)
    specs = [random_spec(rng) for _ in range(n)]
    images = [render(s, size, size, seed=seed * 100_003 + i) for i, s in enumerate(specs)]
    if transform is not None:
        images = transform(images)
    hits = {a: 0 for a in ATTRIBUTES}
    for spec, image in zip(specs, images):
        got = read_scene(image)
        for a in ATTRIBUTES:
            hits[a] += getattr(got, a) == getattr(spec, a)
    return {a: hits[a] / n for a in ATTRIBUTES}


def requested(prompt: str) -> dict[str, str]:
    """The background and dish a prompt asks for, by the toy world's own phrases.

    Attributes the prompt does not name are left out, so a prompt like
    `trigger, a photo of tteokbokki` is scored on the dish only."""
    from lorastudio.toyworld.scenes import BACKGROUND_PHRASES, DISHES

    text = prompt.lower()
    asked: dict[str, str] = {}
    for name, phrase in BACKGROUND_PHRASES.items():
        if phrase in text:
            asked["background"] = name
    for dish in DISHES:
        if dish in text:
            asked["dish"] = dish
    return asked


def prompt_following(prompts: list[str], images: list) -> dict[str, float | None]:
    """Share of images whose read background / dish matches what their prompt asked for
    (None for an attribute no prompt named)."""
    hits = {"background": [], "dish": []}
    for prompt, image in zip(prompts, images):
        asked = requested(prompt)
        if not asked:
            continue
        got = read_scene(image)
        for attr, want in asked.items():
            hits[attr].append(getattr(got, attr) == want)
    return {attr: (sum(v) / len(v) if v else None) for attr, v in hits.items()}
