"""Image statistics for the pixel detectors, measured on what each attribute is.

- white balance: one signed estimate per axis (warm/cool, green/magenta) from the
  illuminant seen on bright, unclipped pixels, refined on the cluster of pixels that share
  its chroma (the neutrals under the cast, wherever the cast moved them); NaN when that
  estimate and a shades-of-grey estimate of the whole frame point opposite ways, or when the
  subject reads as a neutral plate of another cast or tint (a pink, green or tinted grey
  backdrop taken for the illuminant); where the plate agrees, the weaker of the two readings;
- backdrop texture: band-pass energy of the border at three scales (after a smooth
  surface fit removes gradients and falloff), relative to the local level and with the
  sensor-noise floor taken out, as a median over border tiles so a dish reaching the
  frame edge does not count as texture;
- depth of field: how much of the background's 1-4 px band survives against its coarse
  variation (a lens blur removes the first and keeps the second), with the subject's own
  fine detail as the in-focus reference; NaN when the background is plain (a flat backdrop
  cannot show a depth of field); `bg_coarse` is the border's coarse variation alone, which a
  blurred surface keeps and a plain backdrop lacks, and `bg_level` the border's median level;
  `bg_detail` is that 1-4 px band per unit of level and tonal range on its own. The same
  measures on the DETAIL px image (`dt_*`) are a second witness that sees finer texture;
- background colour: the share of border pixels in each colour class;
- key, contrast and saturation from the subject's own luminance and chroma (the middle of
  the frame, so a dark or bright backdrop is not a tonal look), low contrast also from the
  whole frame's darkest and brightest pixels;
- vignette: the radial term of a fit of log luminance outside the dish (plane + r^2), so a
  directional light is not a vignette.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

THUMB = 128
# Depth of field is also read on a larger thumbnail: at THUMB px a sharp fine weave is
# already averaged away, and a lens blur shrinks to a pixel or two.
DETAIL = 256
MIN_SIDE = 16
BORDER = 0.12  # border band width, as a share of the shorter side
TILE = 8
MAX_CAST = 0.55  # |log(R/B)| of the strongest white-balance error a photo plausibly has
CLIPPING_CAST = 0.15  # |log(R/B)| above which the green/magenta reading is not trusted
SUBJECT_WB_TOLERANCE = 0.08  # how far the subject's white-balance reading may sit from the frame's
MAX_TINT = 0.34  # |green - magenta| of the strongest tint a photo plausibly has
PLATE_U_TOLERANCE = 0.15  # a subject reading this close to the frame's warm/cool one is a neutral plate
PLATE_CLIPPED = 0.1  # share of clipped subject pixels above which its chroma is not read
PLATE_SPREAD = 0.12  # interquartile range of a plate's warm/cool reading: one uniform surface
PLATE_DISAGREE = 0.06  # frame and plate readings of opposite sign beyond this: cannot tell
UNIFORM_SPREAD = 0.2  # a subject this uniform reading the opposite cast to the frame's: cannot tell
VESSEL_GAP = 0.2  # a warm frame reading this much warmer than the subject's least warm tenth: cannot tell
PLATE_MAX_CAST = 0.65  # the strongest cast a uniform, unclipped plate may show (MAX_CAST plus a WB error)
SOG_MIN_TINT = 0.065  # the least tint the shades-of-grey reading must show to confirm the frame's
CLIP = 0.985  # a channel at or above this is clipped
SUBJECT_MIN_TINT = 0.03  # how far a dish that is not a neutral plate must lean the frame's tint's way
GREEN_CLIPPED_SUBJECT = 0.09  # ... and how far when only the clipped green channel witnesses the tint
GREEN_CLIPPED_WITNESS = 0.85  # share of bright pixels with green alone clipped that witnesses a green push
VIGNETTE_FLOOR = 0.02  # median luminance outside the dish under which no falloff is read
VIGNETTE_OFFSET = 0.005  # added before the log: small, so a dark frame's falloff is not flattened
TYPICAL_RANGE = 0.6  # p95 - p5 luminance of an ordinary dish photo; texture is scaled to it
NOISE_CAP = 0.012  # rms of the finest band; JPEG photos at THUMB px stay under it
MAX_FILE_BYTES = 200 * 1024 * 1024
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
COLOURS = ("black", "white", "grey", "red", "brown", "blue", "green")
NAN = float("nan")
# The depth-of-field witness read on the DETAIL px image, under these names.
DETAIL_MEASURES = {"bg_detail": "dt_detail", "bg_mid_coarse": "dt_mid_coarse", "bg_coarse": "dt_coarse",
                   "bg_level": "dt_level"}


def _decode(path: Path, side: int):
    from lorastudio.data.images import DecodeLimits, decode_image

    path = Path(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {size} bytes is over the {MAX_FILE_BYTES} byte limit")
    return decode_image(path.read_bytes(), DecodeLimits(), need=lambda w, h: (min(w, side * 2), min(h, side * 2))).image


def _as_array(im, side: int) -> np.ndarray:
    from PIL import Image

    im = im.convert("RGB") if im.mode != "RGB" else im.copy()
    im.thumbnail((side, side), Image.BILINEAR)
    return np.asarray(im, dtype=np.float32) / 255.0


def load_thumbnail(path: Path, side: int = THUMB) -> np.ndarray:
    """Decode an image safely and return an RGB float32 array in [0, 1], at most `side` px a side."""
    return _as_array(_decode(path, side), side)


def pair_from_image(im) -> tuple[np.ndarray, np.ndarray]:
    """A decoded PIL image as the THUMB px thumbnail most measures read and the DETAIL px one
    the depth-of-field witness reads: `measure(*pair_from_image(im))`, at the scales the
    thresholds were set at, whatever the image's own size."""
    return _as_array(im, THUMB), _as_array(im, DETAIL)


def load_pair(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """`pair_from_image` of an image file, decoded once (safely)."""
    return pair_from_image(_decode(path, DETAIL))


def box_blur(a: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window, edges padded by reflection."""
    if r <= 0:
        return a
    k = 2 * r + 1
    p = np.pad(a, r, mode="reflect")
    c = np.cumsum(np.pad(p, ((1, 0), (0, 0))), axis=0)
    rows = (c[k:] - c[:-k]) / k
    c = np.cumsum(np.pad(rows, ((0, 0), (1, 0))), axis=1)
    return (c[:, k:] - c[:, :-k]) / k


def masks(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Border band and centre box."""
    b = max(2, round(BORDER * min(h, w)))
    border = np.ones((h, w), dtype=bool)
    border[b:-b, b:-b] = False
    centre = np.zeros((h, w), dtype=bool)
    centre[int(h * 0.25) : int(h * 0.75), int(w * 0.25) : int(w * 0.75)] = True
    return border, centre


def _green_magenta(u: np.ndarray, v: np.ndarray, unclipped: np.ndarray, lum: np.ndarray) -> float:
    """The green/magenta reading from pixels with no clipped channel only, the bright set
    included: a plate whose green channel clipped under a green cast would otherwise leave
    only its reddish neighbours and read the cast too weak (NaN: too few such pixels)."""
    if unclipped.mean() < 0.05:
        return NAN
    bright = unclipped & (lum >= np.percentile(lum[unclipped], 90))
    u0, v0 = float(np.median(u[bright])), float(np.median(v[bright]))
    near = unclipped & (np.abs(u - u0) < 0.12) & (np.abs(v - v0) < 0.12)
    return float(np.median(v[near])) if near.mean() >= 0.02 else NAN


def _with_plate(frame: float, plate: float) -> float:
    """The frame's reading once a neutral plate has witnessed it: the weaker of the two when
    they point the same way (a white or grey backdrop carries its own tint, as large as a
    weak cast, which the plate under the same light does not show), NaN when they point
    opposite ways beyond what a backdrop's own tint explains."""
    if frame * plate < 0 and max(abs(frame), abs(plate)) > PLATE_DISAGREE:
        return NAN
    return frame if abs(frame) <= abs(plate) else plate


def _plate(subj_u: float, u0: float, subj_clipped: float) -> bool:
    """Whether the subject's reading is a neutral plate: little of it clipped and not warmer
    than the frame's reference (food reads far warmer; a warm table taken for the reference
    reads far warmer than the plate under it). NaN compares False."""
    return subj_u <= u0 + PLATE_U_TOLERANCE and subj_clipped <= PLATE_CLIPPED


def _green_magenta_verdict(v0: float, sv: float, u0: float, subj_u: float, subj_v: float, subj_clipped: float,
                           clip_g: float = NAN) -> float:
    """The green/magenta estimate `v0` once its witnesses agree, NaN ("cannot tell") otherwise.

    - a tint stronger than any grade gives is a coloured surface read as the illuminant;
    - under a strong warm or cool cast a channel clips on every bright neutral and what is
      left tilts the reading (the cast's strength read on the plate where there is one, so a
      warm table taken for the reference does not count as a cast);
    - where the subject's reading is a neutral plate it is the second witness (`_with_plate`):
      a pink, green or tinted grey backdrop is otherwise taken for the illuminant (and a large
      coloured backdrop pulls the shades-of-grey reading, so that one is not asked then).
      Where the subject reads as food or is clipped, the shades-of-grey reading of the whole
      frame must show the same tint, clearly (SOG_MIN_TINT: a tinted backdrop filling the
      frame shows a little of its own); a red or blue backdrop pulls that reading too, and
      then the green channel clipped alone on nearly every bright pixel (`clip_g`, at least
      GREEN_CLIPPED_WITNESS) witnesses a green estimate instead. A neutral frame's brightest
      pixels (its specular highlights) can clip green first as well, so then the subject's
      own reading must show the tint too (GREEN_CLIPPED_SUBJECT, the green threshold). Either
      way the subject's brightest quarter (plate, highlights and food) must lean the same
      way by SUBJECT_MIN_TINT: under a tint it does, a green backdrop brightened by a high
      key or a pink one leaves the dish near neutral.
    """
    plate = _plate(subj_u, u0, subj_clipped)
    strength = min(abs(u0), abs(subj_u)) if plate else abs(u0)
    if not math.isfinite(v0) or abs(v0) > MAX_TINT or not strength <= CLIPPING_CAST:
        return NAN
    if plate:
        return _with_plate(v0, subj_v)
    if v0 * sv < 0 and min(abs(v0), abs(sv)) > 0.06:
        return NAN
    if not math.copysign(1.0, v0) * subj_v >= SUBJECT_MIN_TINT:
        return NAN
    if v0 * sv > 0 and abs(sv) >= SOG_MIN_TINT:
        return v0
    return v0 if v0 > 0 and clip_g >= GREEN_CLIPPED_WITNESS and subj_v >= GREEN_CLIPPED_SUBJECT else NAN


def _warm_cool_verdict(u0: float, su: float, subj_u: float, subj_clipped: float, subj_spread: float) -> float:
    """The warm/cool estimate `u0` once its witnesses agree, NaN ("cannot tell") otherwise.

    - the frame's and the shades-of-grey estimates must not point opposite ways (a bright
      coloured object read as the illuminant shows up as exactly that disagreement), unless
      a neutral plate reads the frame's cast (a red or blue backdrop pulls the whole frame);
    - where the subject reads as a neutral plate it is a second witness (`_with_plate`); a
      uniform subject reading the opposite cast, within a cast's range, makes it cannot tell;
    - a frame reading stronger than any grade (MAX_CAST), or a subject reading much cooler
      than the frame, means the frame's reference was a warm surface, not a neutral: the
      plate's own reading is then the estimate if it is unclipped, uniform (one plate, not
      a bowl rim, food and table mixed), plausible as a cast and agrees in sign with the
      shades-of-grey reading; otherwise cannot tell.
    """
    # A plate that reads the frame's cast outweighs a shades-of-grey reading pulled the other
    # way by a large coloured backdrop.
    plate = _plate(subj_u, u0, subj_clipped)
    plate_agrees = plate and u0 * subj_u > 0 and abs(subj_u - u0) <= SUBJECT_WB_TOLERANCE
    if not math.isfinite(u0) or (u0 * su < 0 and min(abs(u0), abs(su)) > 0.08 and not plate_agrees):
        return NAN
    warm_surface = subj_u < u0 - SUBJECT_WB_TOLERANCE - 0.02
    # A uniform subject reading the opposite cast, within what a neutral under a cast reads
    # (food reads far warmer than any cast), is a neutral the frame's reference disagrees with.
    uniform_against = (subj_spread <= UNIFORM_SPREAD and u0 * subj_u < 0 and min(abs(u0), abs(subj_u)) > 0.15
                       and abs(subj_u) <= MAX_CAST)
    if abs(u0) <= MAX_CAST and not warm_surface:
        if plate:
            return _with_plate(u0, subj_u)
        return NAN if uniform_against else u0
    if (subj_clipped <= PLATE_CLIPPED and subj_spread <= PLATE_SPREAD and abs(subj_u) <= PLATE_MAX_CAST
            and subj_u * su > 0):
        return subj_u
    return NAN


def white_balance(rgb: np.ndarray, lum: np.ndarray) -> dict[str, float]:
    """Signed illuminant chroma: `wb_rb` (> 0 warm, < 0 cool) and `wb_g` (> 0 green, < 0 magenta)."""
    logc = np.log(rgb + 0.02)
    u = logc[..., 0] - logc[..., 2]
    v = logc[..., 1] - (logc[..., 0] + logc[..., 2]) / 2
    valid = (rgb.min(axis=2) < CLIP) & (lum > 0.1)  # one clipped channel still shows the cast
    out = {"wb_rb": NAN, "wb_g": NAN, "wb_share": 0.0, "wb_sog_rb": NAN, "wb_sog_g": NAN, "wb_subj_rb": NAN,
           "wb_subj_g": NAN, "wb_subj_spread": NAN, "wb_subj_low": NAN, "wb_clip_r": NAN, "wb_clip_b": NAN,
           "wb_clip_g": NAN}
    if valid.mean() < 0.05:
        return out
    bright = valid & (lum >= np.percentile(lum[valid], 90))
    bright_unclipped = bright & (rgb.max(axis=2) < CLIP)
    # Which channels clipped on the bright pixels. Under a cast the channel it pushes clips
    # first, and a reading from such pixels understates the cast: it is a lower bound.
    r_clip, g_clip, b_clip = (rgb[bright] >= CLIP).T
    out.update(wb_clip_r=float((r_clip & ~b_clip).mean()), wb_clip_b=float((b_clip & ~r_clip).mean()),
               wb_clip_g=float((g_clip & ~r_clip & ~b_clip).mean()))
    u0 = float(np.median(u[bright]))
    v0 = float(np.median(v[bright_unclipped if bright_unclipped.any() else bright]))
    # One refinement, never re-centred again: iterating would let the window drift onto
    # the largest coloured surface (a wooden table) and read it as the illuminant.
    near = valid & (np.abs(u - u0) < 0.12) & (np.abs(v - v0) < 0.09)
    share = float(near.mean())
    if share < 0.02:
        return out
    u0 = float(np.median(u[near]))
    v0 = _green_magenta(u, v, (rgb.max(axis=2) < CLIP) & (lum > 0.1), lum)
    if not math.isfinite(v0):
        # No unclipped bright cluster of its own: the unclipped pixels of the neutral cluster.
        unclipped = near & (rgb.max(axis=2) < CLIP)
        v0 = float(np.median(v[unclipped])) if unclipped.mean() >= 0.01 else NAN
    px = rgb[valid].astype(np.float64)
    sog = (px**6).mean(axis=0) ** (1 / 6)
    su = math.log(sog[0] + 0.02) - math.log(sog[2] + 0.02)
    sv = math.log(sog[1] + 0.02) - (math.log(sog[0] + 0.02) + math.log(sog[2] + 0.02)) / 2
    out.update(wb_share=share, wb_sog_rb=su, wb_sog_g=sv)
    # A third reading from the subject: the brightest unclipped pixels in the middle of the
    # frame are the plate or a highlight (its least warm tenth is the vessel). A tinted
    # backdrop brighter than the plate would otherwise pass for the illuminant; when the two
    # readings differ, cannot tell.
    in_subject = subject_mask(*lum.shape)
    subj = in_subject & valid & (rgb.max(axis=2) < CLIP)
    if subj.sum() >= 20:
        top = subj & (lum >= np.percentile(lum[subj], 75))
        out["wb_subj_rb"], out["wb_subj_g"] = float(np.median(u[top])), float(np.median(v[top]))
        q25, q75 = np.percentile(u[top], [25, 75])
        out["wb_subj_spread"] = float(q75 - q25)
        out["wb_subj_low"] = float(np.percentile(u[subj], 10))
    subj_clipped = float((rgb[in_subject].max(axis=1) >= CLIP).mean())
    wb_rb = _warm_cool_verdict(u0, su, out["wb_subj_rb"], subj_clipped, out["wb_subj_spread"])
    # A warm estimate far warmer than the least warm tenth of the subject (the vessel, which a
    # cast tints as much as anything; food reads warmer still) took a warm surface for the
    # neutral: a light wooden table under a cool cast, a grey bowl darker than the table.
    out["wb_rb"] = NAN if wb_rb > 0 and wb_rb - out["wb_subj_low"] > VESSEL_GAP else wb_rb
    out["wb_g"] = _green_magenta_verdict(v0, sv, u0, out["wb_subj_rb"], out["wb_subj_g"], subj_clipped,
                                         out["wb_clip_g"])
    return out


def _fit_smooth(lum: np.ndarray, region: np.ndarray) -> np.ndarray:
    """A quadratic surface fitted to `region` (twice, the second time without outliers)."""
    h, w = lum.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx, yy = xx / w - 0.5, yy / h - 0.5
    design = np.stack([np.ones_like(xx), xx, yy, xx * xx, yy * yy, xx * yy], axis=-1)
    keep = region.copy()
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(design[keep], lum[keep], rcond=None)
        fit = design @ coef
        res = np.abs(lum - fit)
        mad = float(np.median(res[region])) + 1e-4
        keep = region & (res < 4 * mad)
        if keep.sum() < 12:
            break
    return fit


def _tile_means(a: np.ndarray) -> np.ndarray:
    """Mean of `a` over each whole TILE x TILE tile, tiles laid from the top-left corner."""
    ny, nx = a.shape[0] // TILE, a.shape[1] // TILE
    return a[: ny * TILE, : nx * TILE].reshape(ny, TILE, nx, TILE).mean(axis=(1, 3), dtype=np.float64)


def texture(lum: np.ndarray, border: np.ndarray, centre: np.ndarray) -> dict[str, float]:
    """Backdrop texture at several scales, and the depth-of-field measures (background detail
    against its coarse variation, the subject's sharpness)."""
    fit = _fit_smooth(lum, border)
    s1, s4 = box_blur(lum, 1), box_blur(lum, 4)
    fine, mid, coarse = lum - s1, s1 - s4, s4 - fit
    fine2, mid2, coarse2 = _tile_means(fine**2), _tile_means(mid**2), _tile_means(coarse**2)
    fine_rms = np.sqrt(fine2).ravel()
    # The flattest tiles show the sensor noise; capped, because a surface with fine grain
    # everywhere has no flat tile, and its grain is texture, not noise.
    noise = min(float(np.percentile(fine_rms, 5)), NOISE_CAP) if len(fine_rms) else 0.0
    level = _tile_means(np.abs(fit))
    per_tile = np.stack([np.sqrt(np.maximum(fine2 - noise**2, 0.0)),
                         np.sqrt(np.maximum(mid2 - (0.45 * noise) ** 2, 0.0)), np.sqrt(coarse2), level], axis=-1)
    # Tiles lying (mostly) inside the border band, and inside the centre box.
    rows = [per_tile[_tile_means(mask.astype(np.float32)) >= 0.75] for mask in (border, centre)]
    bt, ct = rows
    out = {"noise": noise, "bg_texture": NAN, "bg_coarse": NAN, "subject_sharp": NAN, "bg_mid_coarse": NAN,
           "bg_level": NAN, "bg_detail": NAN}
    if len(bt) == 0:
        return out
    out["bg_level"] = float(np.median(bt[:, 3]))
    # Relative to the level, so a darkened wooden table keeps its grain; +0.06 keeps the
    # noise of near-black backdrops from reading as texture.
    tex = np.sqrt(bt[:, 1] ** 2 + 0.5 * bt[:, 2] ** 2) / (bt[:, 3] + 0.06)
    # Per unit of the frame's tonal range: a high-key or faded grade flattens a table's grain
    # exactly as much as it flattens everything else, and it is still a table.
    tonal = float(np.percentile(lum, 95) - np.percentile(lum, 5))
    out["bg_texture"] = float(np.median(tex)) * TYPICAL_RANGE / max(tonal, TYPICAL_RANGE / 2)
    out["bg_coarse"] = float(np.median(bt[:, 2] / (bt[:, 3] + 0.06))) * TYPICAL_RANGE / max(tonal, TYPICAL_RANGE / 2)
    # Depth of field: a lens blur removes the 1-4 px bands and keeps the coarse variation of
    # the surface, so the background's mid / coarse energy falls; a sharp surface keeps both.
    varied = bt[:, 2] > 0.004
    detail = np.sqrt(bt[:, 0] ** 2 + bt[:, 1] ** 2)
    out["bg_mid_coarse"] = float(np.median(detail[varied] / bt[varied, 2])) if varied.sum() >= 3 else NAN
    # The same 1-4 px detail per unit of level and tonal range, on its own: a lens blur leaves
    # next to none above the noise, whatever the surface's coarse variation.
    out["bg_detail"] = float(np.median(detail / (bt[:, 3] + 0.06))) * TYPICAL_RANGE / max(tonal, TYPICAL_RANGE / 2)
    # The in-focus reference: the subject's sharpest tiles keep fine detail next to mid.
    if len(ct):
        sc = ct[:, 1] > max(3.0 * noise * 0.45, 0.004)
        if sc.sum() >= 2:
            out["subject_sharp"] = float(np.percentile(ct[sc, 0] / ct[sc, 1], 80))
    return out


def colour_classes(rgb: np.ndarray) -> np.ndarray:
    """Index into COLOURS per pixel (-1 where no class fits, e.g. yellow or purple)."""
    lum = rgb @ LUMA
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    sat = np.where(mx > 1e-3, (mx - mn) / np.maximum(mx, 1e-3), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    d = np.maximum(mx - mn, 1e-6)
    hue = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) * 60.0
    out = np.full(lum.shape, -1, dtype=np.int8)
    chroma = sat >= 0.3
    out[chroma & (hue >= 75) & (hue < 170)] = COLOURS.index("green")
    out[chroma & (hue >= 170) & (hue < 270)] = COLOURS.index("blue")
    out[chroma & ((hue < 15) | (hue >= 330))] = COLOURS.index("red")
    warmish = chroma & (hue >= 15) & (hue < 45)
    out[warmish & (lum < 0.55)] = COLOURS.index("brown")
    out[warmish & (lum >= 0.55)] = COLOURS.index("red")
    out[~chroma & (lum > 0.7)] = COLOURS.index("white")
    out[~chroma & (lum <= 0.7)] = COLOURS.index("grey")
    out[lum < 0.16] = COLOURS.index("black")
    return out


def subject_mask(h: int, w: int) -> np.ndarray:
    """An ellipse in the middle of the frame, where a dish photo's subject (plate and food)
    sits: small enough that the background never reaches it on an ordinary framing."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return ((xx / w - 0.5) / 0.17) ** 2 + ((yy / h - 0.52) / 0.12) ** 2 <= 1.0


def subject_tones(rgb: np.ndarray, lum: np.ndarray) -> dict[str, float]:
    """Key, contrast and saturation of the subject alone, so a dark or bright backdrop does
    not read as a tonal look: the subject's luminance percentiles, the saturation of its most
    colourful lit pixels (a saturation boost drives a channel to zero), and its chroma per unit
    of tonal range (a desaturating grade removes chroma, a faded grade removes both)."""
    subj = subject_mask(*lum.shape)
    s = lum[subj]
    out = {f"subj_p{q:02d}": float(v) for q, v in zip((2, 10, 98), np.percentile(s, [2, 10, 98]))}
    spread = out["subj_p98"] - out["subj_p02"]
    px = rgb[subj]
    mx, mn = px.max(axis=1), px.min(axis=1)
    lit = (s > 0.1) & (mx < 0.99)
    out["subj_sat98"], out["subj_chroma_rel"] = NAN, NAN
    if lit.sum() >= 20:
        sat = (mx[lit] - mn[lit]) / np.maximum(mx[lit], 1e-3)
        out["subj_sat98"] = float(np.percentile(sat, 98))
        out["subj_chroma_rel"] = float(np.percentile(mx[lit] - mn[lit], 98)) / max(spread, 0.05)
    return out


def radial_falloff(lum: np.ndarray) -> tuple[float, float]:
    """How much darker the frame gets towards its corners, in log luminance from the centre
    to a corner: the radial term of a fit, to the frame outside the dish, of a plane (a
    directional light) plus a term in r^2 (a lens or an added vignette). Texture and the dish
    are not fitted; NaN on a near-black frame, where a falloff cannot be read. Also returns the
    fit's median residual: a blotchy surface leaves a large one, and a falloff read through it
    is not to be trusted."""
    h, w = lum.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = xx / w - 0.5, yy / h - 0.53
    outside = (x / 0.45) ** 2 + (y / 0.4) ** 2 > 1.0
    if outside.sum() < 50 or float(np.median(lum[outside])) < VIGNETTE_FLOOR:
        return NAN, NAN
    logl = np.log(lum + VIGNETTE_OFFSET)
    r2 = (x * x + (yy / h - 0.5) ** 2) / 0.5
    design = np.stack([np.ones_like(x), x, y, r2], axis=-1)
    keep = outside.copy()
    coef = np.zeros(4)
    for _ in range(2):  # the second fit without seams, crumbs and highlights
        coef, *_ = np.linalg.lstsq(design[keep], logl[keep], rcond=None)
        res = np.abs(logl - design @ coef)
        keep = outside & (res < 3 * float(np.median(res[outside])) + 1e-3)
    return float(-coef[3]), float(np.median(res[outside]))


def measure(rgb: np.ndarray, detail: np.ndarray | None = None) -> dict[str, float]:
    """Every statistic the classifiers use, from an RGB float image in [0, 1] (a THUMB px
    thumbnail) and, for the depth-of-field witness (the `dt_` measures, NaN without it), the
    same image at DETAIL px (`detail`, as `load_pair` gives both)."""
    h, w, _ = rgb.shape
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"image is {w}x{h}; the pixel detectors need at least {MIN_SIDE} px a side")
    rgb = rgb.astype(np.float32)
    lum = rgb @ LUMA
    border, centre = masks(h, w)
    feats: dict[str, float] = {"lum_mean": float(lum.mean())}
    feats["lum_p01"], feats["lum_p99"] = (float(v) for v in np.percentile(lum, [1, 99]))
    feats.update(white_balance(rgb, lum))
    feats.update(subject_tones(rgb, lum))
    feats.update(texture(lum, border, centre))
    feats.update(dict.fromkeys(DETAIL_MEASURES.values(), NAN))
    if detail is not None:
        lum_d = detail.astype(np.float32) @ LUMA
        sharp = texture(lum_d, *masks(*lum_d.shape))
        feats.update({name: sharp[key] for key, name in DETAIL_MEASURES.items()})
    classes = colour_classes(rgb[border])
    for k, name in enumerate(COLOURS):
        feats[f"bg_{name}"] = float((classes == k).mean())
    feats["vig_falloff"], feats["vig_residual"] = radial_falloff(lum)
    return feats
