"""Pixel detectors that need no model: background, exposure key, cast, grade, optics.

Each image is decoded (with the size limits of `lorastudio.data.images`) to a thumbnail
of at most THUMB pixels a side, and one of DETAIL pixels for a second depth-of-field
witness, and measured (`measures.measure`). Every attribute comes
from one measured value compared with one threshold, through a soft step, so:

- opposite attributes read the two ends of one signed value (warm and cool are the two
  signs of the white-balance estimate) and cannot both be confident in one image;
- a value near its threshold gives a probability near 0.5: "cannot tell", which the
  contamination table and `--fix` do not count;
- where the measurement itself is undefined (no neutral pixels agree on an illuminant, a
  flat backdrop has no detail to be blurred) the probability is NaN.

`THRESHOLDS` were set on the tuning half of `lorastudio.audit.photolike` (and kept the
audit's own synthetic scenes and the toy world passing); `benchmarks/audit_detectors.py`
reports the held-out half.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lorastudio.audit.detectors import Evidence
from lorastudio.audit.detectors.measures import (COLOURS, DETAIL, MAX_FILE_BYTES, THUMB, load_pair, load_thumbnail,
                                                measure)

__all__ = ["MAX_FILE_BYTES", "THUMB", "THRESHOLDS", "classify", "describe", "detect", "label_ids",
           "load_pair", "load_thumbnail", "measure"]

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
# A mention of the value's id also names the key's: "dark background" covers black, and a
# background named by its colour ("green background") has named a plain backdrop.
NAMED_BY_PHRASES = {
    "black background": ("dark background",), "white background": ("light background",),
    "shallow depth of field": ("blurred background (bokeh)",),
    "plain studio backdrop": ("seamless paper backdrop", "black background", "white background", "grey background",
                              "dark background", "light background", "pastel background", "red background",
                              "warm brown background", "blue background", "green background", "gradient background",
                              "colorful background"),
}

# label -> (measured value, threshold, width, direction); p = 0.5 at the threshold and
# about 0.95 one width beyond it on the `direction` side (+1 above, -1 below).
THRESHOLDS: dict[str, tuple[str, float, float, int]] = {
    "warm": ("wb_rb", 0.2, 0.025, 1), "cool": ("wb_rb", -0.12, 0.015, -1),
    "green_tint": ("wb_g", 0.09, 0.01, 1), "magenta": ("wb_g", -0.095, 0.008, -1),
    # The same casts read from bright pixels on which the cast's own channel clipped (a lower
    # bound of the cast; a warm surface such as linen does not clip): see CLIPPED.
    "warm_clipped": ("wb_rb", 0.175, 0.008, 1), "cool_clipped": ("wb_rb", -0.105, 0.008, -1),
    "green_tint_clipped": ("wb_g", 0.08, 0.006, 1),
    "plain": ("bg_texture", 0.012, 0.003, -1),
    "colour": ("bg_share", 0.5, 0.15, 1),
    "dof_blurred": ("bg_mid_coarse", 0.34, 0.015, -1), "dof_sharp": ("bg_mid_coarse", 0.4, 0.03, -1),
    "dof_subject": ("subject_sharp", 0.3, 0.12, 1),
    "dof_faint": ("bg_mid_coarse", 0.435, 0.005, -1),
    # The DETAIL px witness: clearly sharp above dt_sharp; blurred below dt_blurred_* with its
    # detail/coarse ratio under dt_ratio_* and coarse variation of at least dt_coarse_* (light,
    # dark background).
    "dt_sharp": ("dt_detail", 0.03, 0.003, 1),
    "dt_blurred_light": ("dt_detail", 0.015, 0.001, -1), "dt_ratio_light": ("dt_mid_coarse", 0.5, 0.02, -1),
    "dt_coarse_light": ("dt_coarse", 0.0075, 0.0005, 1),
    "dt_blurred_dark": ("dt_detail", 0.018, 0.001, -1), "dt_ratio_dark": ("dt_mid_coarse", 0.8, 0.03, -1),
    "dt_coarse_dark": ("dt_coarse", 0.012, 0.001, 1),
    "high_key": ("subj_p10", 0.58, 0.03, 1), "low_key": ("subj_p98", 0.5, 0.03, -1),
    "saturated": ("subj_sat98", 0.95, 0.01, 1), "saturated_chroma": ("subj_chroma_rel", 0.5, 0.05, 1),
    "desaturated": ("subj_chroma_rel", 0.29, 0.025, -1),
    "high_contrast_dark": ("subj_p02", 0.155, 0.015, -1), "high_contrast_spread": ("subj_spread", 0.8, 0.02, 1),
    "high_contrast_bright": ("subj_p98", 0.6, 0.03, 1),
    "low_contrast_spread": ("subj_spread", 0.4, 0.02, -1), "low_contrast_dark": ("subj_p02", 0.3, 0.015, 1),
    "low_contrast_bright": ("lum_p99", 0.8, 0.03, -1), "low_contrast_frame": ("lum_p01", 0.27, 0.015, 1),
    "vignette": ("vig_falloff", 0.4, 0.04, 1), "vignette_fit": ("vig_residual", 0.13, 0.01, -1),
}
# A cast label -> the share of bright pixels with the cast's own channel clipped (and not the
# opposite one). From CLIPPED_SHARE up the label's "_clipped" threshold applies.
CLIPPED = {"warm": "wb_clip_r", "cool": "wb_clip_b", "green_tint": "wb_clip_g"}
CLIPPED_SHARE = 0.5
CASTS = ("warm", "cool", "green_tint", "magenta")
# Above this border texture a surface's colour is not "a background colour": the dominant
# class of a wooden table is "cannot tell", the other classes are still confidently absent.
COLOUR_TEXTURE_LIMIT = 0.016
SURFACE_GROUP = "surface"
BLOWN, CRUSHED = 0.97, 0.03  # subject p98 and frame p01 luminance at which the tonal range is clipped
COARSE_STRUCTURE = 0.016  # border coarse variation (per unit of level) above any plain backdrop's
SOLID_SHARE = 0.75
# A light surface whose coarse variation is faint (a blurred white marble keeps only soft veins)
# but above a light plain backdrop's noise and JPEG floor.
FAINT_LEVEL, FAINT_COARSE = 0.5, 0.0075
COMPOUND = {
    "high_key": ("high_key",), "low_key": ("low_key",), "saturated": ("saturated", "saturated_chroma"),
    "low_contrast": ("low_contrast_spread", "low_contrast_dark", "low_contrast_bright", "low_contrast_frame"),
    "vignette": ("vignette", "vignette_fit"),
    "shallow_dof": ("dof_subject",),
}


def _sig(x: float, threshold: float, width: float) -> float:
    """Soft threshold: 0.5 at `threshold`, about 0.95 one `width` beyond it (0.05 below)."""
    if not math.isfinite(x):
        return float("nan")
    return 1.0 / (1.0 + math.exp(min(60.0, -3.0 * (x - threshold) / width)))


def _test(f: dict[str, float], key: str) -> float:
    name, threshold, width, direction = THRESHOLDS[key]
    return _sig(direction * f.get(name, float("nan")), direction * threshold, width)


def _all(*probs: float) -> float:
    """All conditions at once: the smallest probability, NaN if any condition cannot be judged."""
    return float("nan") if any(math.isnan(p) for p in probs) else min(probs)


def _cast_key(g: dict[str, float], label: str) -> str:
    """The threshold a cast label is read against: its `_clipped` one where the cast's own
    channel clipped on most bright pixels (the estimate then understates the cast)."""
    share = g.get(CLIPPED.get(label, ""), float("nan"))
    return f"{label}_clipped" if share >= CLIPPED_SHARE else label


def _derived(f: dict[str, float]) -> dict[str, float]:
    g = dict(f)
    g["subj_spread"] = f["subj_p98"] - f["subj_p02"]
    return g


def _saturation_graded(g: dict[str, float]) -> bool:
    """Whether the frame reads saturated. A saturation grade multiplies every colour's distance
    from grey, a small white-balance error's and a backdrop's own tint included, so on such a
    frame a cast cannot be told from the grade: every cast is "cannot tell"."""
    return _all(*(_test(g, k) for k in COMPOUND["saturated"])) >= 0.5


def _even_frame(out: dict[str, float]) -> bool:
    """Not a vignetted, low- or high-key frame: a falloff leaves coarse variation, clipping
    removes detail, so neither depth-of-field fallback judges such a frame."""
    return out["vignette"] <= 0.1 and out["low_key"] <= 0.1 and out["high_key"] <= 0.1


def _detail_side(g: dict[str, float]) -> str:
    """Which of the DETAIL px witness's threshold sets applies: a light or a dark background."""
    return "light" if g.get("dt_level", float("nan")) >= FAINT_LEVEL else "dark"


def _faint_blur(g: dict[str, float], out: dict[str, float]) -> float:
    """Shallow depth of field on a light surface with faint coarse variation: only a confident
    "blurred" counts (its fine detail gone next to that variation), else "cannot tell"."""
    light = g["bg_level"] >= FAINT_LEVEL and g["bg_coarse"] >= FAINT_COARSE
    if not (light and _even_frame(out)):
        return float("nan")
    p = _all(_test(g, "dof_subject"), _test(g, "dof_faint"))
    return p if p >= 0.5 else float("nan")


def _detail_witness(g: dict[str, float], out: dict[str, float], p: float) -> float:
    """Depth of field once the DETAIL px image has witnessed it. At THUMB px a fine sharp
    weave is already averaged away and reads as blurred: where the finer image shows clear
    detail, a confident "shallow" becomes cannot tell. Where THUMB px cannot tell, the finer
    image decides when it is confident: next to no detail, little against the surface's coarse
    variation, and coarse variation a plain backdrop lacks (`_even_frame` only)."""
    if p >= 0.9:
        return float("nan") if _test(g, "dt_sharp") >= 0.5 else p
    if p <= 0.1 or not _even_frame(out):
        return p
    side = _detail_side(g)
    witness = _all(_test(g, "dof_subject"), *(_test(g, f"dt_{k}_{side}") for k in ("blurred", "ratio", "coarse")))
    return witness if witness >= 0.9 else p


def classify(f: dict[str, float]) -> dict[str, float]:
    """Detector label -> probability that the image shows it (NaN: cannot tell)."""
    g = _derived(f)
    out: dict[str, float] = {}
    shares = {name: g[f"bg_{name}"] for name in COLOURS}
    dominant = max(shares, key=shares.get)
    textured = not g["bg_texture"] < COLOUR_TEXTURE_LIMIT  # NaN counts as textured
    # In a low-key, high-contrast or vignetted frame a dark table crushed to black and a black
    # backdrop look alike, in a high-key frame a light table blown to white and a white
    # backdrop: the dominant class is then "cannot tell" unless the border is plain.
    crushed = (g["subj_p98"] < THRESHOLDS["low_key"][1] or g["subj_p02"] < THRESHOLDS["high_contrast_dark"][1]
               or _test(g, "vignette") >= 0.5)
    blown = g["subj_p10"] > THRESHOLDS["high_key"][1]
    for name, share in shares.items():
        p = _sig(share, THRESHOLDS["colour"][1], THRESHOLDS["colour"][2])
        # Nearly the whole border in one class is that colour, texture or not: a noisy,
        # JPEG-compressed black backdrop on a small image measures as "textured".
        solid = share >= SOLID_SHARE and not (name == "black" and crushed) and not (name == "white" and blown)
        out[name] = float("nan") if textured and name == dominant and not solid else p
    out["plain"] = _test(g, "plain")
    for label in (*CASTS, "desaturated"):
        out[label] = _test(g, _cast_key(g, label))
    for label, keys in COMPOUND.items():
        out[label] = _all(*(_test(g, k) for k in keys))
    if _saturation_graded(g):
        out.update({label: float("nan") for label in CASTS})
    # A contrast curve shows as crushed shadows in the subject, or as a subject spanning
    # nearly the whole tonal range (a light dish under the curve keeps its shadows above black).
    out["high_contrast"] = _all(max(_test(g, "high_contrast_dark"), _test(g, "high_contrast_spread")),
                                _test(g, "high_contrast_bright"))
    if out["high_contrast"] < 0.5 and g["subj_p98"] >= BLOWN and g["lum_p01"] <= CRUSHED:
        # Blown highlights in the subject and crushed blacks in the frame: a light dish under a
        # contrast curve (its shadows lifted out of reach) and a white plate on a black backdrop
        # look alike, so "no contrast curve" cannot be said.
        out["high_contrast"] = float("nan")
    # Blur relative to the in-focus subject: confidently shallow well under dof_blurred,
    # confidently not well over dof_sharp, "cannot tell" in between (a soft texture and a
    # blurred one look alike there) and on a plain backdrop (nothing a lens could blur).
    blurred, sharp = _test(g, "dof_blurred"), _test(g, "dof_sharp")
    ratio_p = blurred if blurred >= 0.5 or math.isnan(blurred) else max(blurred, min(0.5, sharp))
    out["shallow_dof"] = _all(out["shallow_dof"], ratio_p)
    # A lens blur takes a surface's fine texture and leaves its coarse variation (a blurred
    # linen can read as "plain" on texture alone): the background counts as having something
    # to blur when it is confidently not plain or keeps coarse structure no plain backdrop has.
    structured = out["plain"] <= 0.1 or g["bg_coarse"] >= COARSE_STRUCTURE
    if not structured or not out["low_key"] <= 0.1:
        # Nothing a lens could blur, or a background so dark its detail is under the noise.
        out["shallow_dof"] = _faint_blur(g, out)
    out["shallow_dof"] = _detail_witness(g, out, out["shallow_dof"])
    if not out["high_contrast"] <= 0.1:
        out["saturated"] = float("nan")  # a contrast curve saturates colours too
    return out


def describe(f: dict[str, float]) -> dict[str, str]:
    """Detector label -> the measured value(s) against threshold(s), for the --fix diff."""
    g = _derived(f)

    def one(key: str) -> str:
        name, threshold, _, direction = THRESHOLDS[key]
        return f"{name} {g.get(name, float('nan')):+.3f} {'>=' if direction > 0 else '<='} {threshold:+.3f}"

    share_at = THRESHOLDS["colour"][1]
    out = {name: f"share of {name} border pixels {g[f'bg_{name}']:.2f} >= {share_at:.2f} (border texture "
                 f"{g['bg_texture']:.3f} < {COLOUR_TEXTURE_LIMIT:.3f} or share >= {SOLID_SHARE:.2f})" for name in COLOURS}
    for label in ("plain", *CASTS, "desaturated"):
        out[label] = one(_cast_key(g, label))
    for label, share in CLIPPED.items():
        if _cast_key(g, label) != label:
            out[label] += f" ({g[share]:.0%} of bright pixels clipped in the cast's channel)"
    if _saturation_graded(g):
        for label in CASTS:
            out[label] += " (the frame reads saturated: a cast cannot be told from the grade)"
    for label, keys in COMPOUND.items():
        out[label] = ", ".join(one(k) for k in keys)
    out["high_contrast"] = (f"{one('high_contrast_dark')} or {one('high_contrast_spread')}, "
                            f"{one('high_contrast_bright')}")
    side = _detail_side(g)
    out["shallow_dof"] += (f", {one('dof_blurred')}; at {DETAIL} px: {one('dt_sharp')} is sharp, "
                           + ", ".join(one(f"dt_{k}_{side}") for k in ("blurred", "ratio", "coarse")) + " is blurred")
    return out


def label_ids(vocab) -> dict[str, str]:
    """Detector label -> attribute id in `vocab`, for the labels the vocabulary knows."""
    out = {}
    for label, phrase in {**BG_COLOR_PHRASES, **OTHER_PHRASES}.items():
        attr = vocab.match(phrase)
        if attr is not None:
            out[label] = attr.id
    return out


def _named_by(vocab) -> dict[str, tuple[str, ...]]:
    named_by = {}
    for phrase, others in NAMED_BY_PHRASES.items():
        attr = vocab.match(phrase)
        alts = tuple(a.id for a in (vocab.match(o) for o in others) if a is not None)
        if attr is not None and alts:
            named_by[attr.id] = alts
    surfaces = tuple(a.id for a in vocab.attributes if a.group == SURFACE_GROUP)
    plain = vocab.match(OTHER_PHRASES["plain"])
    if plain is not None:
        # A caption that names the surface under the dish has described the background too:
        # the trigger will not absorb it, whatever the pixels make of its texture.
        named_by[plain.id] = named_by.get(plain.id, ()) + surfaces
    for phrase in BG_COLOR_PHRASES.values():
        colour = vocab.match(phrase)
        if colour is not None:  # "on a dark wooden table" has said what colour the background is
            named_by[colour.id] = named_by.get(colour.id, ()) + surfaces
    return named_by


def detect(paths: Sequence[Path], image_ids: Sequence[str], vocab, *, progress: bool = False) -> Evidence:
    """Run the pixel detectors on every image; unreadable images get NaN and a note."""
    from tqdm import tqdm

    ids = label_ids(vocab)
    n = len(paths)
    probs = {attr_id: np.full(n, np.nan, dtype=np.float32) for attr_id in ids.values()}
    details = {attr_id: [""] * n for attr_id in ids.values()}
    unknown = [phrase for label, phrase in {**BG_COLOR_PHRASES, **OTHER_PHRASES}.items() if label not in ids]
    notes = [f"pixel: not checked, not in the vocabulary packs: {', '.join(unknown)}"] if unknown else []
    looked = np.zeros(n, dtype=bool)  # measured: a NaN there is "cannot tell", not "not looked at"
    for i, path in enumerate(tqdm(paths, desc="pixel detectors", unit="img", disable=not progress)):
        try:
            feats = measure(*load_pair(path))
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the audit
            notes.append(f"{image_ids[i]}: could not read image ({type(exc).__name__}: {exc})")
            continue
        scores, said = classify(feats), describe(feats)
        looked[i] = True
        for label, attr_id in ids.items():
            probs[attr_id][i] = scores[label]
            details[attr_id][i] = f"{said[label]} (p={scores[label]:.2f})"
    return Evidence("pixel", list(image_ids), probs, _named_by(vocab), notes, details=details, looked=looked)
