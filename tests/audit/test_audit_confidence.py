"""Issue 17: detectors that abstain rather than guess, never contradict themselves, and hold
on photo-like scenes they were not tuned on (`lorastudio.audit.photolike`, held-out split)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import audit_scenes as scenes
from lorastudio.audit import audit_dataset, photolike
from lorastudio.audit.contamination import (CONTAMINANT, STYLE_OR_CONTAMINANT, contamination_findings,
                                            contamination_table)
from lorastudio.audit.detectors import CANNOT_TELL, NOT_SEEN, OPPOSITES, SEEN, Evidence, pixel
from lorastudio.audit.detectors.measures import (GREEN_CLIPPED_SUBJECT, GREEN_CLIPPED_WITNESS, SOG_MIN_TINT,
                                                   SUBJECT_MIN_TINT, THUMB, _green_magenta_verdict, load_pair,
                                                   measure)
from lorastudio.audit.fix import format_diff, plan_fixes
from lorastudio.cli.main import cli

T = "ohwx_kfood_style"
BASE = f"{T}, a photo of yangnyeom chicken, close-up shot, on a white ceramic plate"


def _probs(image: Image.Image) -> dict[str, float]:
    image = image.convert("RGB")
    image.thumbnail((THUMB, THUMB), Image.BILINEAR)
    return pixel.classify(measure(np.asarray(image, dtype=np.float32) / 255.0))


def _ids(vocab) -> dict[str, str]:
    return pixel.label_ids(vocab)


def _sample(vocab, tmp_path_factory, split: str, n: int):
    """(spec, attribute id -> probability) for the benchmark's own sample of one split,
    decoded from the JPEG files the way `lorastudio audit` reads them."""
    labels = _ids(vocab)
    path = tmp_path_factory.mktemp(split) / "scene.jpg"
    out = []
    for _name, specs, _named in photolike.dataset_specs(split, n=n):
        for spec in specs:
            path.write_bytes(photolike.render_photo(spec))
            probs = pixel.classify(measure(*load_pair(path)))
            out.append((spec, {labels[k]: p for k, p in probs.items() if k in labels}))
    return out


@pytest.fixture(scope="module")
def held_out(vocab, tmp_path_factory):
    """The held-out sample of `benchmarks/audit_detectors.py --n 5 --split held-out`."""
    return _sample(vocab, tmp_path_factory, "held-out", 5)


@pytest.fixture(scope="module")
def fresh(vocab, tmp_path_factory):
    """The fresh sample of `benchmarks/audit_detectors.py --n 5 --split fresh` (a split added
    after the held-out one had been looked at; never tuned on)."""
    return _sample(vocab, tmp_path_factory, "fresh", 5)


def test_calls_are_present_absent_or_cannot_tell():
    ev = Evidence("t", ["a", "b", "c", "d"], {"cast.warm": np.array([0.95, 0.05, 0.5, np.nan], np.float32)})
    calls = ev.calls("cast.warm")
    assert list(calls[:3]) == [SEEN, NOT_SEEN, CANNOT_TELL] and np.isnan(calls[3])


MAIN_SCENE = {"high_key": ("white", "plain"), "low_key": ("black", "plain"), "cool": ("white", "plain"),
              "vignette": ("white", "plain"), "shallow_dof": ("brown", "wood")}


def test_planted_looks_are_themselves_never_their_opposite(vocab):
    """Each look planted in every image of the audit's scene sets is confidently itself, never its opposite."""
    by_id = {v: k for k, v in _ids(vocab).items()}
    for effect, attr in scenes.EFFECT_IDS.items():
        bg, texture = MAIN_SCENE.get(effect, ("grey", "plain"))
        probs = [_probs(scenes.render(scenes.SceneSpec(bg=bg, texture=texture, effects=(effect,), seed=s)))
                 for s in range(4)]
        confident = sum(p[effect] >= 0.9 for p in probs)
        # A light dish under a contrast curve (seed 2: its darkest food stays at 0.25) spans
        # no more of the tonal range than a darker dish with a blown plate: one miss allowed.
        assert confident >= (3 if effect == "high_contrast" else 4), (effect, [p[effect] for p in probs])
        for a, b in OPPOSITES:
            other = b if attr == a else a if attr == b else None
            if other in by_id:
                assert all(not p[by_id[other]] >= 0.9 for p in probs), (effect, other)


def test_photolike_casts_and_keys_are_never_inverted(held_out):
    """On the held-out photo-like sample a planted cast or key is never read as its opposite,
    and no image is ever confidently both ends of one axis."""
    for spec, probs in held_out:
        for a, b in OPPOSITES:
            assert not (probs.get(a, 0) >= 0.9 and probs.get(b, 0) >= 0.9), (spec, a, b)
        for attr in spec.truth():
            for a, b in OPPOSITES:
                other = b if attr == a else a if attr == b else None
                if other is not None and other in probs:
                    assert not probs[other] >= 0.9, (spec, attr, other)


def test_calibration_holds_on_the_held_out_sample(held_out):
    """Confident calls (p >= 0.9 present, p <= 0.1 absent) are right at least 90% / 95% of the time."""
    right_pos = wrong_pos = right_neg = wrong_neg = 0
    for spec, probs in held_out:
        for attr, p in probs.items():
            truth = photolike.expected(spec, attr)
            if truth is None or not np.isfinite(p):
                continue
            if p >= 0.9:
                right_pos, wrong_pos = right_pos + truth, wrong_pos + (not truth)
            elif p <= 0.1:
                right_neg, wrong_neg = right_neg + (not truth), wrong_neg + truth
    precision = right_pos / max(right_pos + wrong_pos, 1)
    npv = right_neg / max(right_neg + wrong_neg, 1)
    print(f"\nheld-out sample: confident present right {precision:.3f} ({right_pos}/{right_pos + wrong_pos}), "
          f"confident absent right {npv:.3f} ({right_neg}/{right_neg + wrong_neg})")
    assert right_pos >= 40 and precision >= 0.95
    assert npv >= 0.98


# Attributes that meet the targets (precision >= 95%, recall >= 90%) on each fixed
# sample (`benchmarks/audit_detectors.py --n 5 --split held-out` / `--split fresh`) and, for
# the fresh split, also at `--n 20`; the rest are below them somewhere and are held to the
# overall calibration only (green tint and shallow depth of field among them).
MEETS_TARGET = ("bg.blue", "bg.brown", "bg.green", "bg.grey", "bg.red", "bg.white", "bgtype.plain", "cast.cool",
                "cast.warm", "grade.desaturated", "grade.low_contrast", "grade.saturated", "light.high_key",
                "light.low_key", "optics.vignette")
MEETS_TARGET_FRESH = ("bg.black", "bg.blue", "bg.brown", "bg.green", "bg.grey", "bg.red", "bg.white", "cast.magenta",
                      "grade.desaturated", "grade.high_contrast", "grade.low_contrast", "grade.saturated",
                      "light.high_key", "light.low_key")


def _assert_targets(sample, attrs) -> None:
    for attr in attrs:
        tp = fp = pos = 0
        for spec, probs in sample:
            truth, p = photolike.expected(spec, attr), probs.get(attr, float("nan"))
            if truth is None:
                continue
            pos += truth
            tp += truth and p >= 0.9
            fp += (not truth) and p >= 0.9
        assert pos >= 2, attr
        assert tp / max(tp + fp, 1) >= 0.95 and tp / pos >= 0.9, (attr, tp, fp, pos)


def test_per_attribute_targets_hold_on_the_held_out_sample(held_out):
    """Precision >= 95% and recall >= 90% of confident calls, per attribute, on the held-out sample."""
    _assert_targets(held_out, MEETS_TARGET)


def test_per_attribute_targets_hold_on_the_fresh_sample(fresh):
    """The same targets on the fresh split, which no threshold was ever set on."""
    _assert_targets(fresh, MEETS_TARGET_FRESH)


def test_fresh_sample_never_inverts_and_stays_calibrated(fresh):
    right_pos = wrong_pos = 0
    for spec, probs in fresh:
        for a, b in OPPOSITES:
            assert not (probs.get(a, 0) >= 0.9 and probs.get(b, 0) >= 0.9), (spec, a, b)
        for attr, p in probs.items():
            truth = photolike.expected(spec, attr)
            if truth is not None and p >= 0.9:
                right_pos, wrong_pos = right_pos + truth, wrong_pos + (not truth)
    assert right_pos >= 40 and right_pos / (right_pos + wrong_pos) >= 0.95


def _dish(backdrop, gains=(1.0, 1.0, 1.0), seed=0, plate=0.9) -> np.ndarray:
    """A grey or white plate with food pieces on a flat backdrop, times per-channel gains (a cast)."""
    rng = np.random.default_rng(seed)
    h, w = 120, 160
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = np.broadcast_to(np.array(backdrop, np.float32), (h, w, 3)).copy()
    img[((xx - 0.5) / 0.3) ** 2 + ((yy - 0.52) / 0.24) ** 2 <= 1] = plate
    for _ in range(6):
        fx, fy = 0.5 + rng.uniform(-0.12, 0.12), 0.52 + rng.uniform(-0.1, 0.1)
        img[((xx - fx) ** 2 + (yy - fy) ** 2) <= 0.045**2] = photolike.FOOD[int(rng.integers(len(photolike.FOOD)))]
    return np.clip(img * np.array(gains, np.float32) + rng.normal(0, 0.004, img.shape), 0, 1).astype(np.float32)


@pytest.mark.parametrize("backdrop", [(0.97, 0.84, 0.95), (0.84, 0.97, 0.84)], ids=["pink", "green"])
def test_a_tinted_backdrop_brighter_than_a_neutral_plate_is_not_a_tint(backdrop):
    """The plate is the neutral that disagrees with the bright backdrop: cannot tell, never a tint."""
    for seed in range(3):
        probs = pixel.classify(measure(_dish(backdrop, seed=seed, plate=0.72)))
        assert not probs["magenta"] >= 0.9 and not probs["green_tint"] >= 0.9, (seed, probs["magenta"])


@pytest.mark.parametrize(("gains", "label", "other"), [((1.08, 0.86, 1.08), "magenta", "green_tint"),
                                                       ((0.9, 1.12, 0.9), "green_tint", "magenta")])
def test_a_cast_over_plate_and_backdrop_is_read(gains, label, other):
    for seed in range(3):
        probs = pixel.classify(measure(_dish((0.8, 0.8, 0.8), gains, seed)))
        assert probs[label] >= 0.9 and probs[other] <= 0.1, (seed, probs[label], probs[other])


def _photo_features(path, background: str, look: str | None, seed: int) -> dict[str, float]:
    path.write_bytes(photolike.render_photo(photolike.PhotoSpec(background, look, seed)))
    return measure(*load_pair(path))


@pytest.mark.parametrize(("background", "seed"), [("grey", 8027), ("blue", 8027), ("brown", 8027), ("white", 8006)])
def test_a_warm_cast_that_clipped_the_red_channel_is_read_against_its_lower_bound(tmp_path, background, seed):
    """An overexposed plate under a warm cast clips red (and often green) and keeps only blue, so
    the estimate understates the cast: the plain threshold is not confident, the clipped one is,
    and the diff says why."""
    f = _photo_features(tmp_path / "scene.jpg", background, "warm", seed)
    assert f["wb_clip_r"] >= pixel.CLIPPED_SHARE, f["wb_clip_r"]
    assert not pixel._test(pixel._derived(f), "warm") >= 0.9  # the failure the lower bound exists for
    probs = pixel.classify(f)
    assert probs["warm"] >= 0.9 and probs["cool"] <= 0.1, (probs["warm"], probs["cool"])
    assert "clipped in the cast's channel" in pixel.describe(f)["warm"]


def test_warm_surfaces_that_clip_nothing_are_never_read_warm(tmp_path):
    """Linen and light wood read warm on their own, without clipping red: the lower clipped threshold
    never applies to them."""
    for background in ("linen", "light_wood"):
        for seed in range(8000, 8010):
            f = _photo_features(tmp_path / "scene.jpg", background, None, seed)
            assert not pixel.classify(f)["warm"] >= 0.9, (background, seed, f["wb_rb"], f["wb_clip_r"])


@pytest.mark.parametrize(("background", "seed"), [("red", 8031), ("red", 8035), ("blue", 8030)])
def test_a_green_tint_on_a_coloured_backdrop_is_witnessed_by_its_clipped_green_channel(tmp_path, background, seed):
    """A red or blue backdrop pulls the shades-of-grey reading under SOG_MIN_TINT and the food on the
    plate hides it as a neutral; green clipped alone on nearly every bright pixel is the witness."""
    f = _photo_features(tmp_path / "scene.jpg", background, "green_tint", seed)
    assert f["wb_sog_g"] < SOG_MIN_TINT and f["wb_clip_g"] >= GREEN_CLIPPED_WITNESS, (f["wb_sog_g"], f["wb_clip_g"])
    probs = pixel.classify(f)
    assert probs["green_tint"] >= 0.9 and probs["magenta"] <= 0.1, (probs["green_tint"], probs["magenta"])


def test_the_clipped_green_witness_needs_the_dish_to_read_the_tint_itself():
    """A neutral frame's specular highlights can clip green first too. Where only that clipping
    witnesses a green estimate (the shades-of-grey reading does not), the subject's own reading
    must reach GREEN_CLIPPED_SUBJECT: a high-key light wooden table (no tint) is cannot tell, a
    tint on a red backdrop is still read. Arguments as measured on two tuning scenes."""
    v0, sv, u0, subj_u, subj_clipped, clip_g = 0.088, -0.003, 0.004, 0.186, 0.309, 0.939
    assert sv < SOG_MIN_TINT and clip_g >= GREEN_CLIPPED_WITNESS
    assert np.isnan(_green_magenta_verdict(v0, sv, u0, subj_u, 0.057, subj_clipped, clip_g))
    assert _green_magenta_verdict(0.101, 0.054, u0, 0.105, 0.116, subj_clipped, 0.92) == 0.101
    assert SUBJECT_MIN_TINT < 0.057 < GREEN_CLIPPED_SUBJECT < 0.116


@pytest.mark.parametrize(("background", "seed", "cast"),
                         [("linen", 8006, "green_tint"), ("slate", 8028, "cool"), ("white", 8043, "cool"),
                          ("linen", 8064, "warm"), ("grey", 8054, "green_tint")])
def test_a_saturation_grade_is_never_read_as_a_cast(tmp_path, background, seed, cast):
    """A saturation grade multiplies the small white-balance error every scene has (and a
    backdrop's own tint) until it crosses a cast threshold: on a frame that reads saturated,
    every cast is cannot tell."""
    f = _photo_features(tmp_path / "scene.jpg", background, "saturated", seed)
    g = pixel._derived(f)
    assert pixel._test(g, pixel._cast_key(g, cast)) >= 0.9  # the failure the rule exists for
    probs = pixel.classify(f)
    assert probs["saturated"] >= 0.9
    assert all(np.isnan(probs[label]) for label in pixel.CASTS), {label: probs[label] for label in pixel.CASTS}
    assert "reads saturated" in pixel.describe(f)[cast]


@pytest.mark.parametrize("seed", [8045, 8057, 8063, 8103])
def test_a_green_backdrop_brightened_by_a_high_key_is_not_a_green_tint(tmp_path, seed):
    """The bright green backdrop passes for the illuminant and the shades-of-grey reading agrees;
    the dish, which a real tint would turn green, stays near neutral: cannot tell, never a tint."""
    f = _photo_features(tmp_path / "scene.jpg", "green", "high_key", seed)
    assert f["wb_subj_g"] < SUBJECT_MIN_TINT, f["wb_subj_g"]
    probs = pixel.classify(f)
    assert not probs["green_tint"] >= 0.9 and not probs["magenta"] >= 0.9, (probs["green_tint"], probs["magenta"])
    assert probs["high_key"] >= 0.9


def test_a_vignette_on_a_black_backdrop_is_read_and_a_plain_black_backdrop_never_is(tmp_path):
    """The falloff is read in log luminance with a small offset, down to a near-black frame: a
    vignetted black backdrop is not "cannot tell", and an even one is confidently not vignetted."""
    vignetted = [pixel.classify(_photo_features(tmp_path / "s.jpg", "black", "vignette", s))["vignette"]
                 for s in range(8000, 8010)]
    even = [pixel.classify(_photo_features(tmp_path / "s.jpg", "black", None, s))["vignette"] for s in range(8000, 8010)]
    assert sum(p >= 0.9 for p in vignetted) >= 9, vignetted
    assert all(p <= 0.1 for p in even), even


def test_white_plate_on_black_is_cannot_tell_for_contrast():
    """Blown plate and crushed backdrop: a contrast curve cannot be ruled out, so no confident absence
    (which would make a 100% high-contrast dataset look partly plain and raise a false ERROR)."""
    for seed in range(3):
        probs = pixel.classify(measure(_dish((0.03, 0.03, 0.03), seed=seed, plate=1.0)))
        assert np.isnan(probs["high_contrast"]), (seed, probs["high_contrast"])


def test_blurred_linen_is_shallow_depth_of_field(tmp_path):
    """A blurred linen tablecloth reads almost plain on texture alone; its coarse weave variation
    still lets the detector see a background a lens could blur."""
    path = tmp_path / "scene.jpg"
    probs = []
    for seed in range(4):
        path.write_bytes(photolike.render_photo(photolike.PhotoSpec("linen", "shallow_dof", 7000 + seed)))
        probs.append(pixel.classify(measure(*load_pair(path)))["shallow_dof"])
    assert sum(p >= 0.9 for p in probs) >= 3, probs


def test_blurred_white_marble_is_shallow_depth_of_field(tmp_path):
    """A blurred white marble keeps only faint soft veins (coarse variation a plain backdrop lacks):
    it reads as shallow depth of field, while a sharp marble and a light plain backdrop never do."""
    path = tmp_path / "scene.jpg"

    def prob(background: str, look: str | None, seed: int) -> float:
        path.write_bytes(photolike.render_photo(photolike.PhotoSpec(background, look, seed)))
        return pixel.classify(measure(*load_pair(path)))["shallow_dof"]

    blurred = [prob("marble", "shallow_dof", 7107 + seed) for seed in range(6)]
    assert sum(p >= 0.9 for p in blurred) >= 4, blurred
    for background in ("marble", "white", "grey"):
        others = [prob(background, None, 7107 + seed) for seed in range(6)]
        assert not any(p >= 0.9 for p in others), (background, others)


def _dof_both_ways(path, background: str, look: str | None, seed: int) -> tuple[float, float]:
    """shallow_dof from the THUMB px image alone, and with the DETAIL px witness."""
    path.write_bytes(photolike.render_photo(photolike.PhotoSpec(background, look, seed)))
    thumb, detail = load_pair(path)
    return pixel.classify(measure(thumb))["shallow_dof"], pixel.classify(measure(thumb, detail))["shallow_dof"]


def test_a_sharp_weave_averaged_away_at_thumb_size_is_cannot_tell_with_the_detail_witness(tmp_path):
    """At THUMB px a sharp linen's weave is averaged away and reads as a lens blur; the DETAIL px
    image still shows it, and two witnesses that disagree give "cannot tell", not a caption."""
    for seed in (7020, 7041, 7095):
        alone, witnessed = _dof_both_ways(tmp_path / "scene.jpg", "linen", None, seed)
        assert alone >= 0.9, (seed, alone)  # the failure the witness exists for
        assert np.isnan(witnessed), (seed, witnessed)


def test_blurred_tables_the_thumb_cannot_judge_read_shallow_with_the_detail_witness(tmp_path):
    """A blurred dark wooden table (its grain gone, faint as a noisy dark backdrop at THUMB px)
    and a blurred white marble: the DETAIL px image is confident where THUMB px is not; the same
    tables in focus are never called shallow."""
    for background, seeds in (("dark_wood", (7024, 7025, 7080)), ("marble", (7006, 7013, 7050))):
        for seed in seeds:
            alone, witnessed = _dof_both_ways(tmp_path / "scene.jpg", background, "shallow_dof", seed)
            assert not alone >= 0.9 and witnessed >= 0.9, (background, seed, alone, witnessed)
            sharp = _dof_both_ways(tmp_path / "scene.jpg", background, None, seed)[1]
            assert not sharp >= 0.9, (background, seed, sharp)


def test_neutral_photolike_controls_give_no_contaminant(tmp_path, vocab):
    for name, specs, named in photolike.dataset_specs("held-out", n=5):
        if not name.startswith("neutral"):
            continue
        ds = photolike.write_dataset(tmp_path, name, specs, name_background=named)
        result = audit_dataset(ds, vocab=vocab)
        assert not [r.id for r in result.contamination if r.verdict == "contaminant"], name
        assert not result.has_errors, (name, [f.message for f in result.findings if f.severity == "error"])


def test_background_named_by_colour_names_the_plain_backdrop(tmp_path, vocab):
    """Captions that say "green background" do not make 'plain studio backdrop' a blocking ERROR."""
    specs = [photolike.PhotoSpec(colour, None, seed) for seed, colour in enumerate(["green", "blue"] * 3)]
    ds = photolike.write_dataset(tmp_path, "coloured", specs, name_background=True)
    result = audit_dataset(ds, vocab=vocab)
    plain = next(r for r in result.contamination if r.id == "bgtype.plain")
    assert plain.present_rate >= 0.8 and plain.verdict == "ok" and plain.mention_rate == 1.0
    assert not result.has_errors, [f.message for f in result.findings if f.severity == "error"]


def _rows(vocab, n: int, evidences):
    ids = [f"i{k}" for k in range(n)]
    return ids, contamination_table(vocab, ids, [set() for _ in ids], evidences)


def test_disagreeing_witnesses_make_cannot_tell_and_fix_writes_nothing(vocab):
    n = 4
    ids = [f"i{k}" for k in range(n)]
    pixel_ev = Evidence("pixel", ids, {"cast.warm": np.full(n, 0.97, np.float32), "cast.cool": np.full(n, 0.0, np.float32),
                                       "bg.black": np.full(n, 0.99, np.float32)})
    clip_ev = Evidence("clip", ids, {"cast.warm": np.full(n, 0.0, np.float32), "cast.cool": np.full(n, 0.95, np.float32)},
                       absent_below=0.01, present_at=0.5)
    _, rows = _rows(vocab, n, [pixel_ev, clip_ev])
    by_id = {r.id: r for r in rows}
    assert by_id["cast.warm"].present_rate == 0.0 and by_id["cast.warm"].decided == 0
    assert by_id["cast.cool"].present_rate == 0.0 and by_id["bg.black"].verdict == "contaminant"
    records = [{"id": i, "caption_text": BASE} for i in ids]
    changes = plan_fixes(rows, records, vocab)
    assert [c.added for c in changes] == [["black background"]] * n
    assert all("warm" not in c.after and "cool" not in c.after for c in changes)


def test_an_undefined_measurement_counts_as_cannot_tell_not_as_unseen(vocab):
    """Half the images confidently tinted, one confidently not, four measured but undefined
    (NaN): the tint is in 50% of the assessed images, under the 60% contaminant threshold. Only
    images the detector never measured drop out of the share."""
    n = 10
    ids = [f"i{k}" for k in range(n)]
    tint = np.array([0.97] * 5 + [0.02] + [np.nan] * 4, np.float32)
    measured = Evidence("pixel", ids, {"cast.green": tint}, looked=np.ones(n, bool))
    _, rows = _rows(vocab, n, [measured])
    row = next(r for r in rows if r.id == "cast.green")
    assert (row.assessed, row.decided, row.present_rate, row.verdict) == (10, 6, 0.5, "ok")
    unread = Evidence("pixel", ids, {"cast.green": tint}, looked=np.array([True] * 6 + [False] * 4))
    _, rows = _rows(vocab, n, [unread])  # four files could not be read: the tint is in 5 of the other 6
    row = next(r for r in rows if r.id == "cast.green")
    # 5 of 6 is over the threshold; with six images a style constant cannot be ruled out.
    assert (row.assessed, row.decided, row.verdict) == (6, 6, STYLE_OR_CONTAMINANT) and row.present_rate > 0.8


def test_pixel_detect_marks_every_measured_image_as_looked(tmp_path, vocab):
    good = tmp_path / "a.jpg"
    good.write_bytes(photolike.render_photo(photolike.PhotoSpec("linen", None, 11)))
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"not a jpeg")
    ev = pixel.detect([good, bad], ["a", "b"], vocab)
    assert ev.looked.tolist() == [True, False] and any("b: could not read image" in n for n in ev.notes)
    calls = ev.calls("optics.shallow_dof")
    assert np.isfinite(calls[0]) and np.isnan(calls[1])


def test_opposites_both_present_become_cannot_tell(vocab):
    n = 3
    ids = [f"i{k}" for k in range(n)]
    a = Evidence("a", ids, {"light.high_key": np.full(n, 0.95, np.float32)})
    b = Evidence("b", ids, {"light.low_key": np.full(n, 0.95, np.float32)})
    _, rows = _rows(vocab, n, [a, b])
    assert all(r.present_rate == 0.0 and r.verdict == "ok" for r in rows)
    assert plan_fixes(rows, [{"id": i, "caption_text": BASE} for i in ids], vocab) == []


def test_fix_never_adds_what_the_caption_contradicts(vocab):
    from lorastudio.audit.contamination import AttributeRow

    row = AttributeRow("bg.black", "black background", "background.color", "objective", ["pixel"], 2, 1.0, 0.0, 0.5,
                       "contaminant", present_unnamed=["a", "b"], evidence={"a": "pixel: share 0.97 >= 0.50", "b": "x"})
    records = [{"id": "a", "caption_text": BASE}, {"id": "b", "caption_text": BASE + ", white background"}]
    changes = plan_fixes([row], records, vocab)
    assert [c.image for c in changes] == ["a"]
    assert "why black background: pixel: share 0.97 >= 0.50" in format_diff(changes)


def test_fix_diff_shows_the_measured_value_and_threshold(tmp_path, vocab):
    spec = next(d for d in scenes.benchmark_datasets(n=4) if d.name == "black_bg")
    ds = scenes.write_dataset(tmp_path, spec, vocab)
    res = CliRunner().invoke(cli, ["audit", str(ds), "--fix", "-q"], catch_exceptions=False)
    assert "why black background: pixel: share of black border pixels" in res.output
    assert ">= 0.50" in res.output and "(p=" in res.output


def _green_rows(vocab, present: int, absent: int, unsure: int):
    n = present + absent + unsure
    ids = [f"i{k}" for k in range(n)]
    probs = np.array([0.99] * present + [0.01] * absent + [np.nan] * unsure, np.float32)
    ev = Evidence("pixel", ids, {"cast.green": probs}, looked=np.ones(n, dtype=bool))
    rows = contamination_table(vocab, ids, [set() for _ in ids], [ev])
    records = [{"id": i, "caption_text": f"{T}, a photo of yangnyeom chicken"} for i in ids]
    return next(r for r in rows if r.id == "cast.green"), rows, records


def test_a_look_in_16_of_18_judged_images_may_be_the_style_and_is_a_warning_not_an_error(vocab):
    """16 present, 2 confidently absent, 2 cannot tell: 89% of what could be judged, but with 18
    images a style constant (90%) cannot be ruled out. Blocking the run would be a guess."""
    row, rows, records = _green_rows(vocab, 16, 2, 2)
    assert row.verdict == STYLE_OR_CONTAMINANT
    findings = [f for f in contamination_findings(rows) if "cast.green" in f.message]
    assert [f.severity for f in findings] == ["warning"]
    assert plan_fixes(rows, records, vocab) == []  # the user decides, --fix writes nothing


def test_a_look_in_half_the_images_stays_a_contaminant_error(vocab):
    row, rows, records = _green_rows(vocab, 12, 8, 0)
    assert row.verdict == CONTAMINANT
    assert [f.severity for f in contamination_findings(rows) if "cast.green" in f.message] == ["error"]
    assert len(plan_fixes(rows, records, vocab)) == 12
