"""A small procedural food-scene generator for the audit tests.

Each scene is a plate of food on a background, rendered with numpy at a tiny size, with
known ("planted") photographic attributes: background colour and texture, exposure key,
colour cast, saturation, contrast, shallow depth of field and vignette. The labels are
vocabulary attribute ids, so tests can compare what the pixel detectors see with what was
planted. Everything is seeded; the same spec always gives the same pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from lorastudio.data.manifest import write_dataset_json, write_manifest, write_sidecar

SIZE = 128
TRIGGER = "ohwx_kfood_style"

# Base background colours (linear-ish sRGB in 0..1) and the attribute each one plants.
BG_COLORS = {
    "black": ((0.06, 0.06, 0.06), "bg.black"),
    "white": ((0.92, 0.92, 0.91), "bg.white"),
    "grey": ((0.52, 0.52, 0.52), "bg.grey"),
    "red": ((0.70, 0.30, 0.26), "bg.red"),
    "blue": ((0.28, 0.38, 0.68), "bg.blue"),
    "green": ((0.32, 0.60, 0.34), "bg.green"),
    "brown": ((0.50, 0.34, 0.22), "bg.brown"),
}
# Food colours: mid-dark and saturated (S 0.6-0.75) like glazed chicken, kimchi, greens.
FOOD_COLORS = [(0.62, 0.24, 0.16), (0.55, 0.32, 0.16), (0.60, 0.22, 0.18), (0.34, 0.46, 0.18), (0.58, 0.42, 0.16)]

# Planted effect -> attribute id it should produce.
EFFECT_IDS = {
    "high_key": "light.high_key",
    "low_key": "light.low_key",
    "warm": "cast.warm",
    "cool": "cast.cool",
    "saturated": "grade.saturated",
    "desaturated": "grade.desaturated",
    "high_contrast": "grade.high_contrast",
    "low_contrast": "grade.low_contrast",
    "shallow_dof": "optics.shallow_dof",
    "vignette": "optics.vignette",
}


@dataclass
class SceneSpec:
    """What to draw. `effects` are keys of EFFECT_IDS."""

    bg: str = "grey"
    texture: str = "plain"  # plain | wood | mottled
    effects: tuple[str, ...] = ()
    plate: str = "white"
    seed: int = 0

    def planted(self) -> set[str]:
        """Attribute ids this scene really shows."""
        ids = {BG_COLORS[self.bg][1]}
        if self.texture == "plain":
            ids.add("bgtype.plain")
        ids.update(EFFECT_IDS[e] for e in self.effects)
        return ids


def _background(spec: SceneSpec, rng: np.random.Generator) -> np.ndarray:
    base = np.array(BG_COLORS[spec.bg][0], dtype=np.float32)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    if spec.texture == "wood":
        phase = rng.uniform(0, 6.3)
        shade = 1.0 + 0.35 * np.sin(2 * np.pi * xx * 5 + phase + 0.6 * np.sin(yy * 9))
    elif spec.texture == "mottled":
        coarse = rng.uniform(0.6, 1.4, size=(6, 6)).astype(np.float32)
        shade = np.asarray(Image.fromarray(coarse).resize((SIZE, SIZE), Image.BICUBIC))
    else:
        shade = np.ones((SIZE, SIZE), dtype=np.float32)
    # Sharp fine grain on textured surfaces: what a shallow depth of field blurs away.
    if spec.texture != "plain":
        shade = shade + rng.normal(0, 0.12, size=shade.shape).astype(np.float32)
    img = np.clip(base[None, None, :] * shade[..., None] + (shade[..., None] - 1) * 0.08, 0, 1)
    if "shallow_dof" in spec.effects:
        img = _blur(img, 4.0)
    return img.astype(np.float32)


def _blur(img: np.ndarray, radius: float) -> np.ndarray:
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255.0


def _plate_and_food(img: np.ndarray, spec: SceneSpec, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    cx, cy = 0.5 + rng.uniform(-0.04, 0.04), 0.52 + rng.uniform(-0.04, 0.04)
    rx = rng.uniform(0.30, 0.34)
    plate = ((xx - cx) / rx) ** 2 + ((yy - cy) / (rx * 0.85)) ** 2 <= 1.0
    plate_rgb = (0.90, 0.90, 0.89) if spec.plate == "white" else (0.10, 0.10, 0.11)
    img[plate] = plate_rgb
    for _ in range(int(rng.integers(4, 7))):
        fx, fy = cx + rng.uniform(-0.08, 0.08), cy + rng.uniform(-0.06, 0.06)
        fr = rng.uniform(0.11, 0.15)
        blob = (xx - fx) ** 2 + (yy - fy) ** 2 <= fr**2
        color = np.array(FOOD_COLORS[int(rng.integers(len(FOOD_COLORS)))], dtype=np.float32)
        img[blob] = color * rng.uniform(0.9, 1.1)
    # Sesame seeds: small bright specks give the subject sharp detail.
    for _ in range(40):
        sx = int((cx + rng.uniform(-0.15, 0.15)) * SIZE)
        sy = int((cy + rng.uniform(-0.1, 0.1)) * SIZE)
        img[sy : sy + 1, sx : sx + 2] = (0.95, 0.9, 0.75)
    return img


def _shift_luma(img: np.ndarray, curve) -> np.ndarray:
    """Change luminance by `curve` and keep chroma: an exposure / tone edit, not a grade."""
    lum = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(img + (curve(lum) - lum)[..., None], 0, 1)


def _apply_effects(img: np.ndarray, effects: tuple[str, ...]) -> np.ndarray:
    if "saturated" in effects or "desaturated" in effects:
        grey = img.mean(axis=2, keepdims=True)
        factor = 1.9 if "saturated" in effects else 0.15
        img = np.clip(grey + (img - grey) * factor, 0, 1)
    if "warm" in effects:
        img = img * np.array([1.10, 1.0, 0.80], dtype=np.float32)
    if "cool" in effects:
        img = img * np.array([0.80, 0.95, 1.12], dtype=np.float32)
    img = np.clip(img, 0, 1)
    if "high_key" in effects:
        img = _shift_luma(img, lambda lum: 1.0 - (1.0 - lum) * 0.5)
    if "low_key" in effects:
        img = 0.42 * img**1.3
    if "high_contrast" in effects:
        img = np.clip(_shift_luma(img, lambda lum: 0.5 + (lum - 0.5) * 1.8), 0, 1)
    if "low_contrast" in effects:
        img = 0.5 + (img - 0.5) * 0.45
    if "vignette" in effects:
        yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
        r2 = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.5
        img = img * (1.0 - 0.45 * r2)[..., None]
    return img


def render(spec: SceneSpec) -> Image.Image:
    """Draw one scene as an RGB PIL image (SIZE x SIZE)."""
    rng = np.random.default_rng(spec.seed)
    img = _background(spec, rng)
    img = _plate_and_food(img, spec, rng)
    img = _apply_effects(img, spec.effects)
    img = img + rng.normal(0, 0.006, size=img.shape).astype(np.float32)
    return Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))


@dataclass
class DatasetSpec:
    """A synthetic dataset: scenes plus which planted ids the captions leave unsaid."""

    name: str
    scenes: list[SceneSpec]
    unnamed: set[str] = field(default_factory=set)

    def expected_contaminants(self, min_present: float = 0.6, constant: float = 0.9) -> set[str]:
        """Planted ids common enough to be contaminants and left out of captions.

        Subjective ids planted in at least `constant` of the images are style constants
        (not contaminants) — attribute ids starting with bg/bgtype are the objective ones.
        """
        n = len(self.scenes)
        out = set()
        for attr in self.unnamed:
            rate = sum(attr in s.planted() for s in self.scenes) / n
            objective = attr.startswith(("bg.", "bgtype."))
            if rate >= min_present and (objective or rate < constant):
                out.add(attr)
        return out


def caption_for(spec: SceneSpec, vocab, unnamed: set[str]) -> str:
    """A golden-order caption naming every planted attribute except `unnamed` ones."""
    named = [vocab.by_id(a) for a in sorted(spec.planted() - unnamed)]
    objective = [a.phrase for a in named if a.slot == 4]
    style = [a.phrase for a in named if a.slot == 5]
    parts = [TRIGGER, "a photo of yangnyeom chicken", "close-up shot", "on a white ceramic plate"]
    return ", ".join(parts + objective + style + ["neutral lighting"] * (not style))


def write_dataset(root: Path, ds: DatasetSpec, vocab) -> Path:
    """Render `ds` into a dataset dir (manifest, images, sidecars, dataset.json)."""
    out = Path(root) / ds.name
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i, spec in enumerate(ds.scenes):
        rid = f"{ds.name}-{i:03d}"
        path = out / "images" / f"{rid}.png"
        render(spec).save(path)
        text = caption_for(spec, vocab, ds.unnamed)
        rec = {
            "id": rid, "file": f"images/{rid}.png", "source": f"synthetic/{rid}.png",
            "sha256": f"{i:064x}", "orig_width": SIZE, "orig_height": SIZE, "width": SIZE,
            "height": SIZE, "crop": [0, 0, SIZE, SIZE], "flags": [], "caption_text": text,
            "caption_source": {"backend": "manual", "model": None},
        }
        records.append(rec)
        write_sidecar(out, rec)
    write_manifest(out, records)
    write_dataset_json(out, {"trigger": TRIGGER, "count": len(records)})
    (out / "planted.json").write_text(json.dumps({r["id"]: sorted(s.planted()) for r, s in zip(records, ds.scenes)}))
    return out


def _mixed(name: str, n: int, seed: int, main: SceneSpec, share: float, others: list[SceneSpec], unnamed: set[str]) -> DatasetSpec:
    """`share` of the scenes copy `main`; the rest cycle through `others`."""
    rng = np.random.default_rng(seed)
    k = int(round(n * share))
    scenes = []
    for i in range(n):
        base = main if i < k else others[i % len(others)]
        scenes.append(SceneSpec(bg=base.bg, texture=base.texture, effects=base.effects, plate=base.plate,
                                seed=int(rng.integers(1 << 30))))
    return DatasetSpec(name, scenes, unnamed)


def benchmark_datasets(n: int = 12) -> list[DatasetSpec]:
    """The fixed set of planted-confounder datasets (and clean controls) used for recall/precision."""
    varied = [SceneSpec(bg=b, texture=t) for b, t in
              [("red", "plain"), ("blue", "wood"), ("green", "plain"), ("brown", "wood"), ("grey", "mottled"), ("white", "plain")]]
    neutral = [SceneSpec(bg="white"), SceneSpec(bg="grey"), SceneSpec(bg="grey", texture="mottled")]
    out = [
        _mixed("clean_varied", n, 1, varied[0], 0.0, varied, set()),
        _mixed("black_bg", n, 2, SceneSpec(bg="black"), 0.75, varied, {"bg.black"}),
        _mixed("black_bg_named", n, 3, SceneSpec(bg="black"), 0.75, varied, set()),
        _mixed("white_bg", n, 4, SceneSpec(bg="white"), 0.75, varied[:5], {"bg.white"}),
        # Captions that name the backdrop's colour have named a plain backdrop (issue 17), so
        # the plain-backdrop contaminant is planted with its colour left out too.
        _mixed("plain_bg", n, 5, SceneSpec(bg="grey"), 0.75, [SceneSpec(bg="brown", texture="wood")],
               {"bgtype.plain", "bg.grey"}),
        _mixed("high_key", n, 6, SceneSpec(bg="white", effects=("high_key",)), 0.75, neutral, {"light.high_key"}),
        _mixed("low_key", n, 7, SceneSpec(bg="black", effects=("low_key",)), 0.75, [SceneSpec(bg="black")], {"light.low_key"}),
        _mixed("warm", n, 8, SceneSpec(bg="grey", effects=("warm",)), 0.75, neutral, {"cast.warm"}),
        _mixed("cool", n, 9, SceneSpec(bg="white", effects=("cool",)), 0.75, neutral, {"cast.cool"}),
        _mixed("saturated", n, 10, SceneSpec(bg="grey", effects=("saturated",)), 0.75, neutral, {"grade.saturated"}),
        _mixed("desaturated", n, 11, SceneSpec(bg="grey", effects=("desaturated",)), 0.75, neutral, {"grade.desaturated"}),
        _mixed("high_contrast", n, 12, SceneSpec(bg="grey", effects=("high_contrast",)), 0.75, neutral, {"grade.high_contrast"}),
        _mixed("low_contrast", n, 13, SceneSpec(bg="grey", effects=("low_contrast",)), 0.75, neutral, {"grade.low_contrast"}),
        _mixed("shallow_dof", n, 14, SceneSpec(bg="brown", texture="wood", effects=("shallow_dof",)), 0.75,
               [SceneSpec(bg="brown", texture="wood"), SceneSpec(bg="grey", texture="mottled")], {"optics.shallow_dof"}),
        _mixed("vignette", n, 15, SceneSpec(bg="white", effects=("vignette",)), 0.75, neutral, {"optics.vignette"}),
        _mixed("warm_constant", n, 16, SceneSpec(bg="grey", effects=("warm",)), 1.0, neutral, {"cast.warm"}),
        _mixed("all_named", n, 17, SceneSpec(bg="grey", effects=("low_contrast", "vignette")), 0.75, neutral, set()),
    ]
    return out
