"""Procedural food-photo-like scenes drawn with numpy, each with its ground-truth spec.

Attributes use the phrases of the shipped vocabulary packs so that captions built from a
spec are the "golden" captions, and degraded variants (trigger + subject only) can be made
for contamination experiments. Everything is deterministic for a seed.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

BACKGROUNDS = {
    "black": (18, 18, 20),
    "white": (236, 236, 232),
    "wooden table": (139, 94, 52),
    "marble": (214, 212, 208),
    "blue backdrop": (52, 92, 170),
}
BACKGROUND_PHRASES = {
    "black": "black background",
    "white": "white background",
    "wooden table": "on a wooden table",
    "marble": "white marble surface",
    "blue backdrop": "blue background",
}
VESSELS = {"white plate": (245, 245, 242), "black bowl": (30, 30, 34), "wooden tray": (170, 120, 70)}
VESSEL_PHRASES = {"white plate": "on a white plate", "black bowl": "in a black bowl", "wooden tray": "on a wooden tray"}
DISHES = {
    # name -> (piece colour, sauce colour under the pieces, piece shape). The hues are far
    # apart (green/red ratio ~0.23, ~0.45, ~0.85) so a reader separates them under any
    # lighting, and no dish uses the garnish colours (cream, green).
    "yangnyeom chicken": ((150, 35, 20), (110, 28, 18), "blob"),
    "tteokbokki": ((235, 110, 40), (200, 85, 35), "stick"),
    "bibimbap": ((205, 180, 140), (205, 180, 140), "mosaic"),
}
# Toppings are darker than the rice or yellow, never cream: sesame seeds must stand out.
BIBIMBAP_TOPPINGS = ((240, 210, 70), (120, 90, 70), (95, 75, 60), (170, 130, 90))
GARNISHES = {"sesame seeds": (250, 245, 225), "green onion": (70, 170, 60), "none": None}
GARNISH_PHRASES = {"sesame seeds": "sprinkled with sesame seeds", "green onion": "chopped green onions"}
LIGHTING = {"neutral": 1.0, "bright": 1.2, "dim": 0.6, "warm": 1.0}
WARM_TINT = (1.12, 0.98, 0.78)
# The specular highlight of a glossy dish sits up-left of the centre (light from the top
# left), at this offset in units of the vessel radius; garnish is kept out of it so the two
# attributes never overlap.
GLOSS_OFFSET = -0.25
GLOSS_SIGMA = 0.13
LIGHTING_PHRASES = {
    "neutral": "neutral lighting",
    "bright": "high-key bright lighting",
    "dim": "dim moody lighting",
    "warm": "warm tungsten light",
}


@dataclass(frozen=True)
class SceneSpec:
    """What is in one scene; the ground truth for captions and attribute readers."""

    background: str = "white"
    vessel: str = "white plate"
    dish: str = "yangnyeom chicken"
    garnish: str = "none"
    gloss: bool = False
    lighting: str = "neutral"

    def to_dict(self) -> dict:
        """Plain-dict form for JSON files."""
        return asdict(self)


def random_spec(rng: random.Random, **fixed: object) -> SceneSpec:
    """Draw a spec uniformly, with any attribute pinned through keyword arguments."""
    choice = {
        "background": rng.choice(sorted(BACKGROUNDS)),
        "vessel": rng.choice(sorted(VESSELS)),
        "dish": rng.choice(sorted(DISHES)),
        "garnish": rng.choice(sorted(GARNISHES)),
        "gloss": rng.random() < 0.5,
        "lighting": rng.choice(sorted(LIGHTING)),
    }
    choice.update(fixed)
    return SceneSpec(**choice)  # type: ignore[arg-type]


def golden_caption(spec: SceneSpec, trigger: str | None = None, mode: str = "golden") -> str:
    """The caption a careful captioner writes: every visible attribute, in the golden order.

    `mode="minimal"` gives the degraded `trigger, subject` caption used to show contamination;
    `mode="objective"` names everything visible except the style (gloss), which is what a
    style LoRA's captions should do: the trigger then learns the style and nothing else.
    """
    parts = [trigger] if trigger else []
    parts.append(f"a photo of {spec.dish}")
    if mode == "minimal":
        return ", ".join(parts)
    parts.append(VESSEL_PHRASES[spec.vessel])
    if spec.garnish != "none":
        parts.append(GARNISH_PHRASES[spec.garnish])
    parts.append(BACKGROUND_PHRASES[spec.background])
    parts.append(LIGHTING_PHRASES[spec.lighting])
    if spec.gloss and mode != "objective":
        parts.append("glossy")
    return ", ".join(parts)


def render(spec: SceneSpec, width: int = 64, height: int = 64, seed: int = 0, noise: float = 4.0) -> Image.Image:
    """Draw the scene at any size; geometry scales with the shorter side."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.float32)
    img[:] = BACKGROUNDS[spec.background]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    side = min(width, height)
    if spec.background == "wooden table":
        img *= (0.85 + 0.15 * np.sin(yy / side * 40 + np.sin(xx / side * 6)))[..., None]
    elif spec.background == "marble":
        # Wide grey veins: texture is what tells marble from a white backdrop under bright light.
        img -= (70 * np.abs(np.sin((xx + 0.6 * yy) / side * 9)) ** 3)[..., None]
    cx = width / 2 + rng.uniform(-0.04, 0.04) * side
    cy = height / 2 + rng.uniform(-0.04, 0.04) * side
    radius = side * rng.uniform(0.36, 0.42)
    dist = np.hypot(xx - cx, yy - cy)
    img[dist < radius] = VESSELS[spec.vessel]
    _draw_dish(img, spec, rng, cx, cy, radius * 0.68, xx, yy)
    _draw_garnish(img, spec, rng, cx, cy, radius, side)
    if spec.gloss:
        gx, gy = cx + GLOSS_OFFSET * radius, cy + GLOSS_OFFSET * radius
        spot = np.exp(-(((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * (radius * GLOSS_SIGMA) ** 2)))
        img += 160 * spot[..., None]
    img *= LIGHTING[spec.lighting]
    if spec.lighting == "warm":
        img *= np.array(WARM_TINT, np.float32)
    img += rng.normal(0, noise, img.shape).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _draw_dish(img, spec, rng, cx, cy, r, xx, yy) -> None:
    colour, sauce, shape = DISHES[spec.dish]
    inside = np.hypot(xx - cx, yy - cy) < r
    # A sauce bed under the pieces: the middle of the vessel always shows the dish, so the
    # dish and gloss readers never look at bare plate.
    img[inside] = sauce
    if shape == "mosaic":
        for k, col in enumerate(BIBIMBAP_TOPPINGS):
            # Right, down, left, up: none of them under the up-left highlight.
            ang = k * np.pi / 2
            seg = inside & (np.hypot(xx - cx - 0.55 * r * np.cos(ang), yy - cy - 0.55 * r * np.sin(ang)) < 0.27 * r)
            img[seg] = col
        return
    colour = np.array(colour, np.float32)
    for _ in range(7):
        ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.5) * r
        px, py = cx + rad * np.cos(ang), cy + rad * np.sin(ang)
        if shape == "blob":
            piece = np.hypot(xx - px, yy - py) < 0.4 * r
        else:
            rot = rng.uniform(0, np.pi)
            u = (xx - px) * np.cos(rot) + (yy - py) * np.sin(rot)
            v = -(xx - px) * np.sin(rot) + (yy - py) * np.cos(rot)
            piece = (np.abs(u) < 0.45 * r) & (np.abs(v) < 0.14 * r)
        img[piece & inside] = colour * rng.uniform(0.9, 1.08)


def _draw_garnish(img, spec, rng, cx, cy, radius, side) -> None:
    colour = GARNISHES[spec.garnish]
    if colour is None:
        return
    h, w = img.shape[:2]
    # Marks are 1/12 of the image side (5 px at 64 px) so they survive an 8x VAE downscale.
    size = max(2, round(side / 12))
    gx, gy = cx + GLOSS_OFFSET * radius, cy + GLOSS_OFFSET * radius
    placed = 0
    while placed < 9:
        ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.55) * radius
        x, y = cx + rad * np.cos(ang), cy + rad * np.sin(ang)
        if np.hypot(x - gx, y - gy) < radius * 0.3:
            continue
        x0, y0 = max(0, int(x) - size // 2), max(0, int(y) - size // 2)
        img[y0 : min(h, y0 + size), x0 : min(w, x0 + size)] = colour
        placed += 1
