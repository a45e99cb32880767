"""Pixel-detector precision, recall and contradictions on photo-like scenes they were not tuned on.

Renders `lorastudio.audit.photolike` datasets (each look and each backdrop planted at 100%
and at 50%, plus neutral controls, flat drawings among them) for the chosen splits (tuning,
held-out, fresh), runs the pixel detectors the way `lorastudio audit` does, and prints per
attribute, per split:

- precision and recall of confident calls (p >= 0.9 present); abstentions (0.1 < p < 0.9
  or cannot tell) count against recall, never as a detection;
- contradictions: images where an attribute and its opposite are both confidently present,
  plus images where a planted look is confidently reported as its opposite;
- calibration: the share of confident-present calls that were right and of confident-
  absent calls that were right;
- per dataset, through the full audit: contaminants found and missed (a planted look or
  backdrop common enough, unnamed and not a style constant), contaminant ERRORs that should
  not be there, any ERROR at all on the neutral controls, and the "style or contaminant"
  warnings (a look too common to rule out a style constant).

The shipped thresholds (`lorastudio.audit.detectors.pixel.THRESHOLDS`) were set looking at
the tuning split only. The held-out split's failures were looked at once (to choose what to
fix, not thresholds), so the "fresh" split was added and run only after tuning was frozen.
Fresh was then looked at in turn, so a fourth split, "final", was added before the next
round changed any threshold and run once after it was frozen: quote held-out, fresh and
final side by side, final as the untouched figure. "confirm" was added the same way once final had
been run, "verify" once confirm had been run, "recheck" once verify had been run, and
"sequel" once recheck had been run. At 20 images a dataset a look is planted in 30 images, so one
image moves recall by 3.3 points and a detector at 95% misses a target on about one split in
three by chance: "wide", added once sequel had been run, is run at 100 images a dataset (150
planted images a look, 4,100 images in all). "broad" was added the same way once wide had
been run, and "spare" once broad had been run: a round that changes a detector or a
verdict after that quotes spare, at --n 100, as its untouched figure.

    .venv/bin/python benchmarks/audit_detectors.py            # tuning + held-out, 10 images a dataset
    .venv/bin/python benchmarks/audit_detectors.py --n 20 --split fresh
    .venv/bin/python benchmarks/audit_detectors.py --split all # tuning, held-out and fresh
    .venv/bin/python benchmarks/audit_detectors.py --n 20 --split final
    .venv/bin/python benchmarks/audit_detectors.py --n 20 --split confirm
    .venv/bin/python benchmarks/audit_detectors.py --n 20 --split verify
    .venv/bin/python benchmarks/audit_detectors.py --n 20 --split recheck
    .venv/bin/python benchmarks/audit_detectors.py --n 20 --split sequel
    .venv/bin/python benchmarks/audit_detectors.py --n 100 --split wide
    .venv/bin/python benchmarks/audit_detectors.py --n 100 --split broad    # run once, after freezing
    .venv/bin/python benchmarks/audit_detectors.py --n 100 --split spare    # the untouched split now
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from lorastudio.audit import audit_dataset, photolike
from lorastudio.audit.contamination import STYLE_CONSTANT_RATE, STYLE_OR_CONTAMINANT
from lorastudio.audit.detectors import CONFIDENT, OPPOSITES, opposites_of
from lorastudio.audit.detectors import pixel
from lorastudio.captions.vocab import DEFAULT_MIN_PRESENT, load_vocabulary


def expected_contaminants(scenes, named_background: bool, vocab) -> set[str]:
    """Planted ids that are real contaminants: common enough, unnamed, and not a style constant."""
    out = set()
    for attr_id in {a for s in scenes for a in s.truth()}:
        attr = vocab.by_id(attr_id)
        rate = float(np.mean([attr_id in s.truth() for s in scenes]))
        threshold = attr.min_present if attr.min_present != DEFAULT_MIN_PRESENT else DEFAULT_MIN_PRESENT
        named = named_background and (attr_id.startswith("bg.") or attr_id == "bgtype.plain")
        if rate >= threshold and not named and (attr.kind == "objective" or rate < STYLE_CONSTANT_RATE):
            out.add(attr_id)
    return out


def run_split(split: str, n: int, root: Path, vocab) -> tuple[dict, dict]:
    """Per-attribute counts and per-dataset audit outcomes for one split."""
    labels = pixel.label_ids(vocab)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    datasets = {"false_errors": [], "control_errors": 0, "missed": [], "datasets": 0, "found": 0, "expected": 0,
                "unsure": []}
    for name, scenes, named in photolike.dataset_specs(split, n):
        ds = photolike.write_dataset(root / split, name, scenes, name_background=named)
        paths = sorted((ds / "images").glob("*.jpg"))
        ev = pixel.detect(paths, [p.stem for p in paths], vocab)
        calls = {a: ev.calls(a) for a in labels.values()}
        for i, spec in enumerate(scenes):
            present = {a for a, c in calls.items() if c[i] == 1}
            for a in labels.values():
                truth, call = photolike.expected(spec, a), calls[a][i]
                if truth is None:
                    continue
                c = counts[a]
                c["pos"] += truth
                c["tp"] += truth and call == 1
                c["fp"] += (not truth) and call == 1
                c["tn"] += (not truth) and call == -1
                c["fn_conf"] += truth and call == -1
                c["abstain"] += truth and (not np.isfinite(call) or call == 0)
                if truth and present & opposites_of(a):
                    c["inverted"] += 1
            for a, b in OPPOSITES:
                if a in present and b in present:
                    counts[a]["both"] += 1
        result = audit_dataset(ds, vocab=vocab)
        errors = {r.id for r in result.contamination if r.verdict == "contaminant"}
        datasets["unsure"] += [f"{split}/{name}: {r.id}" for r in result.contamination if r.verdict == STYLE_OR_CONTAMINANT]
        expect = expected_contaminants(scenes, named, vocab)
        datasets["datasets"] += 1
        # An ERROR is false only when the attribute cannot reach the threshold even counting
        # every image whose truth is undefined (a white marble table read as "white background").
        defensible = {a for a in errors - expect
                      if np.mean([photolike.expected(s, a) is not False for s in scenes]) >= 0.6 and not named}
        datasets["false_errors"] += [f"{split}/{name}: {a}" for a in sorted(errors - expect - defensible)]
        datasets["missed"] += [f"{split}/{name}: {a}" for a in sorted(expect - errors)]
        datasets["found"] += len(errors & expect)
        datasets["expected"] += len(expect)
        if name.startswith("neutral"):
            datasets["control_errors"] += sum(f.severity == "error" for f in result.findings)
    return counts, datasets


def print_table(split: str, counts: dict, datasets: dict, vocab) -> None:
    print(f"\n== {split}: per image, confident calls (p >= {CONFIDENT})")
    print(f"{'attribute':22s} {'planted':>7s} {'prec':>6s} {'recall':>6s} {'abstain':>7s} {'contra':>6s} {'FP':>4s}")
    tot = defaultdict(int)
    for a in sorted(counts):
        c = counts[a]
        prec = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else float("nan")
        rec = c["tp"] / c["pos"] if c["pos"] else float("nan")
        contra = c["inverted"] + c["both"]
        print(f"{a:22s} {c['pos']:7d} {prec:6.1%} {rec:6.1%} {c['abstain']:7d} {contra:6d} {c['fp']:4d}")
        for k in ("tp", "fp", "pos", "tn", "fn_conf"):
            tot[k] += c[k]
        tot["contra"] += contra
    cal_pos = tot["tp"] / max(tot["tp"] + tot["fp"], 1)
    cal_neg = tot["tn"] / max(tot["tn"] + tot["fn_conf"], 1)
    print(f"{'all':22s} {tot['pos']:7d} {cal_pos:6.1%} {tot['tp'] / max(tot['pos'], 1):6.1%} {'':7s} {tot['contra']:6d} {tot['fp']:4d}")
    print(f"calibration: confident-present calls right {cal_pos:.1%}, confident-absent calls right {cal_neg:.1%}")
    print(f"datasets audited: {datasets['datasets']}; contaminants found {datasets['found']} of "
          f"{datasets['expected']}; false contaminant ERRORs: {len(datasets['false_errors'])}; "
          f"ERRORs on the neutral controls: {datasets['control_errors']}")
    for line in datasets["unsure"][:20]:
        print(f"  warning, style or contaminant: {line}")
    for line in datasets["false_errors"][:20]:
        print(f"  false ERROR {line}")
    for line in datasets["missed"][:20]:
        print(f"  missed {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10, help="images per dataset")
    parser.add_argument("--split", choices=["both", "all", *photolike.SPLIT_SEEDS], default="both",
                        help="both: tuning and held-out; all: tuning, held-out and fresh (final, confirm, verify, recheck, sequel, wide, broad and spare only by name)")
    args = parser.parse_args()
    vocab = load_vocabulary(("food.korean",))
    groups = {"both": ["tuning", "held-out"], "all": ["tuning", "held-out", "fresh"]}
    splits = groups.get(args.split, [args.split])
    with tempfile.TemporaryDirectory() as tmp:
        for split in splits:
            start = time.perf_counter()
            counts, datasets = run_split(split, args.n, Path(tmp), vocab)
            print_table(split, counts, datasets, vocab)
            print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
