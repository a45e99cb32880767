"""Pixel detectors that need no model: background, exposure key, cast, grade, optics.

Each image is decoded (with the size limits of `lorastudio.data.images`) to a thumbnail
of at most THUMB pixels a side, and a handful of statistics are measured:

- background colour and plainness from the outer border band (where the subject rarely is);
- high-key / low-key from the luminance mean and the 5th / 95th percentiles;
- colour cast from near-neutral pixels only (a red dish is not a warm cast);
- saturation and fading from the chroma of mid-tone pixels;
- contrast from clipped highlights with deep shadows, or a compressed tonal range;
- shallow depth of field: a border that varies (a real scene) but holds no fine detail
  while the centre does;
- vignette: border luminance falling with the distance from the centre.

Scores go through a soft threshold so borderline images get probabilities near 0.5, and
images far from a threshold count as confidently present or absent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lorastudio.audit.detectors import Evidence

THUMB = 128
MIN_SIDE = 16
BORDER = 0.1  # border band width, as a share of the shorter side
MAX_FILE_BYTES = 200 * 1024 * 1024

# What the detector can say, as canonical vocabulary phrases; resolved to ids with
# `Vocabulary.match` so renamed ids in a pack do not silently break the detector.
BG_COLOR_PHRASES = {
    "black": "black background", "white": "white background", "grey": "grey background",
    "red": "red background", "brown": "warm brown background", "blue": "blue background",
    "green": "green background",
}
OTHER_PHRASES = {
    "plain": "plain studio backdrop", "high_key": "high-key bright lighting", "low_key": "low-key dark lighting",
    "warm": "warm color cast", "cool": "cool blue cast", "green_tint": "green tint", "magenta": "magenta tint",
    "saturated": "highly saturated", "desaturated": "desaturated", "high_contrast": "high contrast",
    "low_contrast": "low contrast", "shallow_dof": "shallow depth of field", "vignette": "vignette",
}
# A mention of the value's id also names the key's: "dark background" covers black.
NAMED_BY_PHRASES = {
    "black background": ("dark background",), "white background": ("light background",),
    "shallow depth of field": ("blurred background (bokeh)",),
}


def _sig(x: float, threshold: float, width: float) -> float:
    """Soft threshold: 0.5 at `threshold`, about 0.95 one `width` beyond it (0.05 below)."""
    if not math.isfinite(x):
        return float("nan")
    return 1.0 / (1.0 + math.exp(-3.0 * (x - threshold) / width))


def _all(*probs: float) -> float:
    """All conditions at once: the smallest probability, NaN if any condition cannot be judged."""
    return float("nan") if any(math.isnan(p) for p in probs) else min(probs)


def load_thumbnail(path: Path, side: int = THUMB) -> np.ndarray:
    """Decode an image safely and return an RGB float32 array in [0, 1], at most `side` px a side."""
    from PIL import Image

    from lorastudio.data.images import DecodeLimits, decode_image

    path = Path(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {size} bytes is over the {MAX_FILE_BYTES} byte limit")
    decoded = decode_image(path.read_bytes(), DecodeLimits(), need=lambda w, h: (min(w, side * 2), min(h, side * 2)))
    im = decoded.image
    im.thumbnail((side, side), Image.BILINEAR)
    return np.asarray(im, dtype=np.float32) / 255.0


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _laplacian_abs(lum: np.ndarray) -> np.ndarray:
    lap = np.zeros_like(lum)
    lap[1:-1, 1:-1] = 4 * lum[1:-1, 1:-1] - lum[:-2, 1:-1] - lum[2:, 1:-1] - lum[1:-1, :-2] - lum[1:-1, 2:]
    return np.abs(lap)


def _masks(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Border band, centre box, and squared normalised distance from the centre."""
    b = max(2, round(BORDER * min(h, w)))
    border = np.ones((h, w), dtype=bool)
    border[b:-b, b:-b] = False
    centre = np.zeros((h, w), dtype=bool)
    centre[int(h * 0.3) : int(h * 0.7), int(w * 0.3) : int(w * 0.7)] = True
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = (((xx + 0.5) / w - 0.5) ** 2 + ((yy + 0.5) / h - 0.5) ** 2) / 0.5
    return border, centre, r2


def measure(rgb: np.ndarray) -> dict[str, float]:
    """The statistics the classifiers use, from an RGB float image in [0, 1]."""
    h, w, _ = rgb.shape
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"image is {w}x{h}; the pixel detectors need at least {MIN_SIDE} px a side")
    lum = _luma(rgb)
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    sat = np.where(mx > 1e-3, (mx - mn) / np.maximum(mx, 1e-3), 0.0)
    border, centre, r2 = _masks(h, w)
    bmed = np.median(rgb[border], axis=0)
    bmx, bmn = float(bmed.max()), float(bmed.min())
    feats = {
        "bg_r": float(bmed[0]), "bg_g": float(bmed[1]), "bg_b": float(bmed[2]),
        "bg_lum": float(bmed @ np.array([0.299, 0.587, 0.114])),
        "bg_sat": (bmx - bmn) / bmx if bmx > 1e-3 else 0.0,
        "lum_mean": float(lum.mean()),
    }
    feats["lum_p01"], feats["lum_p05"], feats["lum_p95"], feats["lum_p99"] = (
        float(v) for v in np.percentile(lum, [1, 5, 95, 99]))
    feats["clip_high"] = float((lum >= 0.98).mean())
    # Colour cast from near-neutral, well-exposed pixels: a white plate or grey wall.
    neutral = (sat < 0.35) & (lum > 0.2) & (lum < 0.97)
    feats["neutral_share"] = float(neutral.mean())
    if neutral.mean() >= 0.02:
        px = rgb[neutral]
        scale = max(float(lum[neutral].mean()), 1e-3)
        feats["cast_rb"] = float((px[:, 0] - px[:, 2]).mean()) / scale
        feats["cast_g"] = float((px[:, 1] - (px[:, 0] + px[:, 2]) / 2).mean()) / scale
    else:
        feats["cast_rb"] = feats["cast_g"] = float("nan")
    mid = (lum > 0.12) & (lum < 0.95)
    # Shares of mid-tone pixels that are colourful / vividly coloured: a dish is a small part
    # of the frame, so percentiles over the whole image would only see the background.
    feats["colourful_share"] = float((sat[mid] > 0.25).mean()) if mid.any() else float("nan")
    feats["vivid_share"] = float(((mx - mn)[mid] > 0.62).mean()) if mid.any() else float("nan")
    lap = _laplacian_abs(lum)
    feats["hf_border"] = float(lap[border].mean())
    feats["hf_centre"] = float(lap[centre].mean())
    feats.update(_vignette(lum, border, r2))
    if feats["vig_strength"] > 0.15:
        # Under a vignette the mid-edges show the background colour best.
        feats.update(_edge_colour(rgb))
    return feats


def _patch_means(lum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean luminance of the 4 corner patches and, per corner, of its 2 neighbouring mid-edges."""
    h, w = lum.shape
    ph, pw = max(2, h // 10), max(2, w // 10)
    top, bottom, left, right = slice(0, ph), slice(h - ph, h), slice(0, pw), slice(w - pw, w)
    mid_r, mid_c = slice(h // 2 - ph // 2, h // 2 + ph // 2 + 1), slice(w // 2 - pw // 2, w // 2 + pw // 2 + 1)
    m = {name: float(lum[r, c].mean()) for name, (r, c) in {
        "tl": (top, left), "tr": (top, right), "bl": (bottom, left), "br": (bottom, right),
        "t": (top, mid_c), "b": (bottom, mid_c), "l": (mid_r, left), "r": (mid_r, right)}.items()}
    corners = np.array([m["tl"], m["tr"], m["bl"], m["br"]])
    edges = np.array([(m["t"] + m["l"]) / 2, (m["t"] + m["r"]) / 2, (m["b"] + m["l"]) / 2, (m["b"] + m["r"]) / 2])
    return corners, edges


def _vignette(lum: np.ndarray, border: np.ndarray, r2: np.ndarray) -> dict[str, float]:
    """Vignette strength and the border's variation once a radial falloff is removed.

    Strength is the smallest darkening of a corner against its neighbouring mid-edges: a
    vignette darkens all four corners, a textured wall rarely does.
    """
    corners, edges = _patch_means(lum)
    level = float(edges.mean())
    darkening = 1.0 - corners / np.maximum(edges, 1e-3)
    strength = float(darkening.min()) if level > 0.12 else float("nan")
    spread = float(darkening.max() - darkening.min())
    design = np.stack([np.ones(int(border.sum()), dtype=np.float32), r2[border]], axis=1)
    coef, *_ = np.linalg.lstsq(design, lum[border], rcond=None)
    residual = lum[border] - design @ coef
    return {"vig_strength": strength, "vig_spread": spread, "edge_level": level, "bg_std": float(residual.std())}


def _edge_colour(rgb: np.ndarray) -> dict[str, float]:
    h, w, _ = rgb.shape
    ph, pw = max(2, h // 10), max(2, w // 10)
    pix = np.concatenate([rgb[:ph, w // 2 - pw : w // 2 + pw].reshape(-1, 3), rgb[-ph:, w // 2 - pw : w // 2 + pw].reshape(-1, 3),
                          rgb[h // 2 - ph : h // 2 + ph, :pw].reshape(-1, 3), rgb[h // 2 - ph : h // 2 + ph, -pw:].reshape(-1, 3)])
    med = np.median(pix, axis=0)
    mx, mn = float(med.max()), float(med.min())
    return {"bg_r": float(med[0]), "bg_g": float(med[1]), "bg_b": float(med[2]),
            "bg_lum": float(med @ np.array([0.299, 0.587, 0.114])), "bg_sat": (mx - mn) / mx if mx > 1e-3 else 0.0}


def _bg_color(f: dict[str, float]) -> str | None:
    """Name the border colour, or None when the border is too varied to have one."""
    if f["bg_std"] > 0.2:
        return None
    lum, sat = f["bg_lum"], f["bg_sat"]
    if lum < 0.16:
        return "black"
    if sat < 0.3:
        return "white" if lum > 0.7 else "grey"
    r, g, b = f["bg_r"], f["bg_g"], f["bg_b"]
    hue = _hue(r, g, b)
    if 75 <= hue < 170:
        return "green"
    if 170 <= hue < 270:
        return "blue"
    if hue < 15 or hue >= 330:
        return "red"
    if hue < 45:
        return "brown" if lum < 0.55 else "red"
    return None


def _hue(r: float, g: float, b: float) -> float:
    mx, mn = max(r, g, b), min(r, g, b)
    if mx - mn < 1e-6:
        return 0.0
    if mx == r:
        h = ((g - b) / (mx - mn)) % 6
    elif mx == g:
        h = (b - r) / (mx - mn) + 2
    else:
        h = (r - g) / (mx - mn) + 4
    return 60.0 * h


def classify(f: dict[str, float]) -> dict[str, float]:
    """Detector label -> probability that the image shows it (NaN: cannot tell)."""
    out: dict[str, float] = {}
    colour = _bg_color(f)
    plain_enough = f["bg_std"] < 0.06
    for name in BG_COLOR_PHRASES:
        if colour is None:
            out[name] = float("nan")
        else:
            # A plain border gives a confident colour; a textured one only a likely one.
            out[name] = 1.0 if name == colour else (0.0 if plain_enough else 0.2)
    out["plain"] = _sig(-f["bg_std"], -0.04, 0.01)
    out["high_key"] = _all(_sig(f["lum_mean"], 0.68, 0.04), _sig(f["lum_p05"], 0.55, 0.06))
    out["low_key"] = _all(_sig(-f["lum_mean"], -0.2, 0.04), _sig(-f["lum_p95"], -0.5, 0.08))
    out["warm"] = _sig(f["cast_rb"], 0.12, 0.05)
    out["cool"] = _sig(-f["cast_rb"], 0.12, 0.05)
    out["green_tint"] = _sig(f["cast_g"], 0.08, 0.04)
    out["magenta"] = _sig(-f["cast_g"], 0.08, 0.04)
    out["saturated"] = _sig(f["vivid_share"], 0.03, 0.015)
    out["desaturated"] = _sig(-f["colourful_share"], -0.015, 0.008)
    out["high_contrast"] = _all(_sig(f["clip_high"], 0.02, 0.01), _sig(-f["lum_p01"], -0.32, 0.06))
    spread = f["lum_p99"] - f["lum_p01"]
    out["low_contrast"] = _all(_sig(-spread, -0.45, 0.08), _sig(-f["lum_p99"], -0.88, 0.04), _sig(f["lum_p01"], 0.12, 0.04))
    # Shallow depth of field: the border varies (a scene, not a plain backdrop) but has
    # little fine detail compared with the subject in the centre.
    ratio = f["hf_border"] / max(f["hf_centre"], 1e-4)
    out["shallow_dof"] = _all(_sig(f["bg_std"], 0.045, 0.015), _sig(-ratio, -0.5, 0.15))
    # A lens vignette darkens the four corners alike; a mottled wall darkens them at random.
    out["vignette"] = _all(_sig(f["vig_strength"], 0.12, 0.05), _sig(-f["vig_spread"], -0.15, 0.05))
    return out


def label_ids(vocab) -> dict[str, str]:
    """Detector label -> attribute id in `vocab`, for the labels the vocabulary knows."""
    out = {}
    for label, phrase in {**BG_COLOR_PHRASES, **OTHER_PHRASES}.items():
        attr = vocab.match(phrase)
        if attr is not None:
            out[label] = attr.id
    return out


def detect(paths: Sequence[Path], image_ids: Sequence[str], vocab, *, progress: bool = False) -> Evidence:
    """Run the pixel detectors on every image; unreadable images get NaN and a note."""
    from tqdm import tqdm

    ids = label_ids(vocab)
    n = len(paths)
    probs = {attr_id: np.full(n, np.nan, dtype=np.float32) for attr_id in ids.values()}
    unknown = [phrase for label, phrase in {**BG_COLOR_PHRASES, **OTHER_PHRASES}.items() if label not in ids]
    notes = [f"pixel: not checked, not in the vocabulary packs: {', '.join(unknown)}"] if unknown else []
    for i, path in enumerate(tqdm(paths, desc="pixel detectors", unit="img", disable=not progress)):
        try:
            scores = classify(measure(load_thumbnail(path)))
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the audit
            notes.append(f"{image_ids[i]}: could not read image ({type(exc).__name__}: {exc})")
            continue
        for label, attr_id in ids.items():
            probs[attr_id][i] = scores[label]
    named_by = {}
    for phrase, others in NAMED_BY_PHRASES.items():
        attr = vocab.match(phrase)
        alts = tuple(a.id for a in (vocab.match(o) for o in others) if a is not None)
        if attr is not None and alts:
            named_by[attr.id] = alts
    return Evidence("pixel", list(image_ids), probs, named_by, notes)
