"""Photo-like food scenes for evaluating the pixel detectors on images they were not tuned on.

Not the toy world and not the audit tests' scene generator: every image is a dish on a
plate on a surface, drawn at a few hundred pixels with textured and graded surfaces
(wood planks and grain, marble veins, linen weave, slate, concrete) or a plain paper
backdrop with a light falloff, a white plate or a grey stoneware bowl with a soft shadow, food
pieces with shading and specular highlights, garnish (sesame, green onion, chili), a
directional light gradient, varied exposure, a small white-balance error, sensor noise and
JPEG compression. One global look (`LOOKS`) can be planted on top. `flat=True` draws the
same layout as flat colour fields with no texture, noise or gradient (a drawing).

`split` names a seed range: "tuning" is what thresholds may be set on; "held-out" was the
first split the figures were quoted on, and after a round of tuning that looked at its
failures it is no longer untouched; "fresh" is a split added after that round, run only once
tuning is frozen. After the fresh split had been looked at too, "final" was added before the
next round changed any threshold, and run once after that round was frozen; "confirm" was
added after final's run in the same way, for the round after it. Everything is
seeded; a spec always renders the same bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

LOOKS = {
    "warm": "cast.warm", "cool": "cast.cool", "green_tint": "cast.green", "magenta": "cast.magenta",
    "high_key": "light.high_key", "low_key": "light.low_key", "saturated": "grade.saturated",
    "desaturated": "grade.desaturated", "high_contrast": "grade.high_contrast", "low_contrast": "grade.low_contrast",
    "shallow_dof": "optics.shallow_dof", "vignette": "optics.vignette",
}
SURFACES = {  # name -> caption phrase
    "dark_wood": "on a dark wooden table", "light_wood": "on a light wooden table", "marble": "on a white marble surface",
    "linen": "on a linen tablecloth", "slate": "on a black slate", "concrete": "on a grey concrete surface",
}
BACKDROPS = {  # name -> (rgb, attribute id)
    "black": ((0.05, 0.05, 0.055), "bg.black"), "white": ((0.90, 0.90, 0.89), "bg.white"),
    "grey": ((0.50, 0.50, 0.50), "bg.grey"), "red": ((0.68, 0.18, 0.16), "bg.red"),
    "brown": ((0.45, 0.28, 0.16), "bg.brown"), "blue": ((0.20, 0.32, 0.62), "bg.blue"),
    "green": ((0.22, 0.50, 0.26), "bg.green"),
}
# Seed bases. Each split's scene seeds are its base plus draws below 2**30, so "fresh" (whose
# range starts past the other two's ends) never repeats a tuning or held-out scene, and
# "final" (past the end of fresh's range, 3_000_000_019 + 2**30) never repeats any of them;
# nor does "confirm" (past final's end), added once final had been run, nor "verify" (past
# confirm's end, 20_000_000_003 + 2**30), added once confirm had been run, nor "recheck" (past
# verify's end), added once verify had been run, nor "sequel" (past recheck's end), added once
# recheck had been run, nor "wide" (past sequel's end), added once sequel had been run and meant
# to be run at --n 100: 150 planted images a look, so one image is 0.7 points, not 3.3; nor
# "broad" (past wide's end), added the same way once wide had been run, nor "spare" (past
# broad's end), added once broad had been run.
SPLIT_SEEDS = {"tuning": 0, "held-out": 1_000_003, "fresh": 3_000_000_019, "final": 9_000_000_011,
               "confirm": 20_000_000_003, "verify": 33_000_000_017, "recheck": 50_000_000_021,
               "sequel": 70_000_000_027, "wide": 90_000_000_029,
               "broad": 110_000_000_031, "spare": 130_000_000_033}
FOOD = [(0.55, 0.22, 0.10), (0.70, 0.40, 0.12), (0.62, 0.16, 0.12), (0.80, 0.62, 0.30), (0.45, 0.30, 0.18)]
GARNISH = {"sesame": (0.93, 0.87, 0.70), "green_onion": (0.30, 0.62, 0.22), "chili": (0.80, 0.12, 0.08)}


@dataclass(frozen=True)
class PhotoSpec:
    """One scene: a surface or backdrop, the vessel, an optional look, and the seed."""

    background: str  # a SURFACES or BACKDROPS key
    look: str | None = None
    seed: int = 0
    flat: bool = False

    @property
    def backdrop(self) -> bool:
        """True for a plain backdrop (as opposed to a textured surface)."""
        return self.background in BACKDROPS

    def truth(self) -> set[str]:
        """Attribute ids the scene really shows."""
        ids = {LOOKS[self.look]} if self.look else set()
        if self.backdrop:
            ids |= {BACKDROPS[self.background][1], "bgtype.plain"}
        return ids

    def caption(self, trigger: str, *, name_background: bool = True) -> str:
        """A golden-order caption that names the background (unless told not to) and no look."""
        parts = [trigger, "a photo of yangnyeom chicken", "close-up shot", "on a white ceramic plate"]
        if name_background:
            parts.append(f"{self.background} background" if self.backdrop else SURFACES[self.background])
        return ", ".join(parts)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return xx / w, yy / h


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    from PIL import Image

    coarse = rng.normal(0, 1, size=(cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)


def _surface(spec: PhotoSpec, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    xx, yy = _grid(h, w)
    if spec.backdrop:
        base = np.array(BACKDROPS[spec.background][0], np.float32) * rng.uniform(0.92, 1.08, 3).astype(np.float32)
        falloff = 1.0 + rng.uniform(0.04, 0.12) * (0.5 - yy) + rng.uniform(-0.05, 0.05) * (xx - 0.5)
        shade = np.ones((h, w), np.float32) if spec.flat else falloff
        return np.clip(base[None, None] * shade[..., None], 0, 1)
    if spec.flat:
        colour = {"dark_wood": (0.30, 0.18, 0.10), "light_wood": (0.66, 0.50, 0.34), "marble": (0.86, 0.86, 0.84),
                  "linen": (0.80, 0.76, 0.68), "slate": (0.16, 0.16, 0.17), "concrete": (0.55, 0.55, 0.53)}
        return np.broadcast_to(np.array(colour[spec.background], np.float32), (h, w, 3)).copy()
    fine = rng.normal(0, 1, size=(h, w)).astype(np.float32)
    if spec.background in ("dark_wood", "light_wood"):
        base = np.array((0.30, 0.18, 0.10) if spec.background == "dark_wood" else (0.66, 0.50, 0.34), np.float32)
        warp = _smooth_noise(rng, h, w, 5) * 0.04
        grain = np.sin(2 * np.pi * (yy + warp) * rng.uniform(18, 30)) * 0.18 + fine * 0.05
        seams = (np.abs(((yy + 0.013) * rng.uniform(3, 5)) % 1.0) < 0.012).astype(np.float32) * -0.45
        shade = 1.0 + grain + seams + _smooth_noise(rng, h, w, 4) * 0.08
    elif spec.background == "marble":
        base = np.array((0.86, 0.86, 0.84), np.float32)
        turb = _smooth_noise(rng, h, w, 6) * 2.0
        veins = np.abs(np.sin((xx * 3 + yy * 2) * np.pi + turb)) ** 0.15
        shade = 0.78 + 0.22 * veins + fine * 0.02
    elif spec.background == "linen":
        base = np.array((0.80, 0.76, 0.68), np.float32)
        period = rng.uniform(5, 8)
        px, py = np.mgrid[0:h, 0:w].astype(np.float32)
        weave = np.sin(2 * np.pi * px / period) * np.sin(2 * np.pi * py / period) * 0.10
        shade = 1.0 + weave + _smooth_noise(rng, h, w, 12) * 0.05 + fine * 0.03
    else:
        base = np.array((0.16, 0.16, 0.17) if spec.background == "slate" else (0.55, 0.55, 0.53), np.float32)
        shade = 1.0 + _smooth_noise(rng, h, w, 10) * 0.15 + _smooth_noise(rng, h, w, 30) * 0.10 + fine * 0.06
    return np.clip(base[None, None] * shade[..., None], 0, 1).astype(np.float32)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    from PIL import Image, ImageFilter

    pil = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(sigma)), np.float32) / 255.0


def _vessel_and_food(img: np.ndarray, spec: PhotoSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw the plate (or bowl), its shadow, the food and the garnish; returns the image and the subject mask."""
    h, w, _ = img.shape
    xx, yy = _grid(h, w)
    cx, cy = 0.5 + rng.uniform(-0.06, 0.06), 0.53 + rng.uniform(-0.05, 0.05)
    rx, ry = rng.uniform(0.26, 0.33), rng.uniform(0.20, 0.27)
    d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    if not spec.flat:
        shadow = ((xx - cx - 0.03) / rx) ** 2 + ((yy - cy - 0.04) / ry) ** 2
        img = img * (1 - 0.35 * np.clip(1.3 - shadow, 0, 1) ** 1.5)[..., None]
    plate = d <= 1.0
    bowl = rng.random() < 0.25
    vessel = np.array((0.60, 0.60, 0.58) if bowl else (0.91, 0.91, 0.90), np.float32)
    shade = np.ones_like(d) if spec.flat else 1.0 - 0.12 * np.clip(d - 0.75, 0, 1) * 4 + 0.05 * (0.5 - yy)
    img[plate] = np.clip(vessel[None] * shade[plate][:, None], 0, 1)
    for _ in range(int(rng.integers(5, 9))):
        fx, fy = cx + rng.uniform(-0.5, 0.5) * rx, cy + rng.uniform(-0.5, 0.5) * ry
        fr = rng.uniform(0.05, 0.09)
        dd = ((xx - fx) ** 2 + (yy - fy) ** 2) / fr**2
        piece = dd <= 1.0
        colour = np.array(FOOD[int(rng.integers(len(FOOD)))], np.float32) * rng.uniform(0.85, 1.1)
        tone = np.ones_like(dd) if spec.flat else 1.05 - 0.35 * dd + 0.05 * rng.normal(size=dd.shape)
        img[piece] = np.clip(colour[None] * tone[piece][:, None], 0, 1)
        if not spec.flat:
            spec_d = ((xx - fx + fr * 0.35) ** 2 + (yy - fy + fr * 0.35) ** 2) / (fr * 0.22) ** 2
            img[spec_d <= 1.0] = 0.97  # a specular highlight: the light's own colour
    kind = list(GARNISH)[int(rng.integers(len(GARNISH)))]
    colour = np.array(GARNISH[kind], np.float32)
    for _ in range(int(rng.integers(25, 50))):
        gx, gy = int((cx + rng.uniform(-0.5, 0.5) * rx) * w), int((cy + rng.uniform(-0.5, 0.5) * ry) * h)
        img[gy : gy + 2, gx : gx + int(rng.integers(2, 5))] = colour
    return img, plate


def _tone(img: np.ndarray, curve) -> np.ndarray:
    lum = img @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(img + (curve(lum) - lum)[..., None], 0, 1)


def _look(img: np.ndarray, look: str | None, subject: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    u = rng.uniform
    gains = {"warm": (u(1.12, 1.28), 1.0, u(0.70, 0.84)), "cool": (u(0.76, 0.88), u(0.97, 1.0), u(1.14, 1.28)),
             "green_tint": (u(0.88, 0.93), u(1.08, 1.15), u(0.88, 0.93)),
             "magenta": (u(1.05, 1.10), u(0.84, 0.90), u(1.05, 1.10))}
    if look in gains:
        return np.clip(img * np.array(gains[look], np.float32), 0, 1)
    if look in ("saturated", "desaturated"):
        grey = img.mean(axis=2, keepdims=True)
        return np.clip(grey + (img - grey) * (u(1.6, 1.9) if look == "saturated" else u(0.08, 0.22)), 0, 1)
    if look == "high_key":
        return _tone(np.clip(img * u(1.15, 1.3), 0, 1), lambda lum: 1.0 - (1.0 - lum) * u(0.38, 0.48))
    if look == "low_key":
        spot = _blur(np.repeat(subject[..., None].astype(np.float32), 3, axis=2), 12.0)[..., 0]
        return np.clip(img * (0.3 + 0.7 * spot)[..., None] * u(0.40, 0.48), 0, 1) ** 1.15
    if look == "high_contrast":
        return _tone(img, lambda lum: np.clip(0.5 + (lum - 0.5) * u(1.7, 2.0), 0, 1))
    if look == "low_contrast":
        return 0.5 + (img - 0.5) * u(0.38, 0.5)
    if look == "vignette":
        xx, yy = _grid(*img.shape[:2])
        return img * (1.0 - u(0.4, 0.55) * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.5)[..., None]
    return img


def render_photo(spec: PhotoSpec) -> bytes:
    """The scene as JPEG bytes (a few hundred px a side, quality 70-92)."""
    from PIL import Image

    rng = np.random.default_rng(spec.seed)
    h, w = int(rng.integers(200, 300)), int(rng.integers(240, 340))
    img = _surface(spec, rng, h, w)
    if spec.look == "shallow_dof":
        img = _blur(img, float(rng.uniform(5.0, 9.0)))
    img, subject = _vessel_and_food(img, spec, rng)
    if not spec.flat:
        xx, yy = _grid(h, w)
        angle = rng.uniform(0, 2 * np.pi)
        light = 1.0 + rng.uniform(0.05, 0.15) * ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle))
        img = np.clip(img * light[..., None] * 2 ** rng.uniform(-0.3, 0.3), 0, 1)
        img = np.clip(img * rng.uniform(0.97, 1.03, 3).astype(np.float32), 0, 1)  # a small white-balance error
    img = _look(img, spec.look, subject, rng)
    if not spec.flat:
        sigma = rng.uniform(0.004, 0.014)
        img = img + rng.normal(0, sigma, (h, w, 1)) + rng.normal(0, sigma * 0.5, (h, w, 3))
    buf = io.BytesIO()
    quality = int(rng.integers(70, 93)) if not spec.flat else 95
    Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def dataset_specs(split: str, n: int = 10) -> list[tuple[str, list[PhotoSpec], bool]]:
    """(name, scenes, captions name the background) for every benchmark dataset of one split.

    Each look at 100% and at 50% (the rest neutral), with captions that name the background;
    each backdrop at 100% and 50% with the background left unnamed; neutral controls
    (photo-like and flat drawn) with the background named.
    """
    base = SPLIT_SEEDS[split]
    rng = np.random.default_rng(base)
    surfaces, backdrops = list(SURFACES), list(BACKDROPS)
    everything = surfaces + backdrops

    def seeds(k: int) -> list[int]:
        return [base + int(s) for s in rng.integers(0, 1 << 30, size=k)]

    out = []
    for look in LOOKS:
        for share in (1.0, 0.5):
            k = round(n * share)
            scenes = [PhotoSpec(everything[int(rng.integers(len(everything)))] if look != "shallow_dof"
                                else surfaces[int(rng.integers(len(surfaces)))], look if i < k else None, s)
                      for i, s in enumerate(seeds(n))]
            out.append((f"{look}_{int(share * 100)}", scenes, True))
    for bd in backdrops:
        for share in (1.0, 0.5):
            k = round(n * share)
            scenes = [PhotoSpec(bd if i < k else surfaces[i % len(surfaces)], None, s) for i, s in enumerate(seeds(n))]
            out.append((f"{bd}_backdrop_{int(share * 100)}", scenes, False))
    out.append(("neutral_surfaces", [PhotoSpec(surfaces[i % len(surfaces)], None, s) for i, s in enumerate(seeds(n))], True))
    out.append(("neutral_mixed", [PhotoSpec(everything[i % len(everything)], None, s) for i, s in enumerate(seeds(n))], True))
    out.append(("neutral_flat", [PhotoSpec(everything[i % len(everything)], None, s, flat=True)
                                 for i, s in enumerate(seeds(n))], True))
    return out


def write_dataset(root, name: str, scenes: list[PhotoSpec], *, name_background: bool,
                  trigger: str = "ohwx_kfood_style"):
    """Render `scenes` into a dataset dir `root/name` (JPEG images, manifest, sidecars, dataset.json)."""
    from pathlib import Path

    from lorastudio.data.manifest import write_dataset_json, write_manifest, write_sidecar

    out = Path(root) / name
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i, spec in enumerate(scenes):
        rid = f"{name}-{i:03d}"
        data = render_photo(spec)
        (out / "images" / f"{rid}.jpg").write_bytes(data)
        rec = {"id": rid, "file": f"images/{rid}.jpg", "source": f"photolike/{rid}.jpg", "sha256": f"{spec.seed:064x}",
               "orig_width": 0, "orig_height": 0, "width": 0, "height": 0, "crop": [0, 0, 0, 0], "flags": [],
               "caption_text": spec.caption(trigger, name_background=name_background),
               "caption_source": {"backend": "manual", "model": None}}
        records.append(rec)
        write_sidecar(out, rec)
    write_manifest(out, records)
    write_dataset_json(out, {"trigger": trigger, "count": len(records)})
    return out


TONAL_LOOKS = {"high_key", "low_key", "high_contrast", "low_contrast", "vignette", "warm", "cool", "green_tint",
               "magenta", "saturated", "desaturated"}


def expected(spec: PhotoSpec, attr_id: str) -> bool | None:
    """Whether `spec` shows `attr_id` (True / False), or None where the truth is not defined.

    A backdrop's colour is scored only when no tonal look changed it (a white backdrop under
    a low-key look is no longer white); on a wooden or concrete surface only "black" and
    "white background" are scored (as absent: a darkened wooden table is not a black
    backdrop), the other colours, and any colour of a white or black surface (marble, linen,
    slate), are a matter of naming. A flat drawing's surface has no texture, so
    whether it is "plain" is not scored.
    """
    if attr_id.startswith("bg."):
        if spec.backdrop:
            return None if spec.look in TONAL_LOOKS else attr_id in spec.truth()
        dark_or_light = spec.background in ("marble", "linen", "slate")  # a white or black surface
        return False if attr_id in ("bg.black", "bg.white") and not spec.flat and not dark_or_light else None
    if attr_id == "bgtype.plain":
        return None if spec.flat and not spec.backdrop else attr_id in spec.truth()
    return attr_id in spec.truth()
