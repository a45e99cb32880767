"""Audit cost: text rules on 1,000, 10,000 and 100,000 captions, pixel detectors in images/s.

The text rules make one pass over the captions (plus per-group counters), so each tenfold
step (1k -> 10k, 10k -> 100k) must take at most 12x (reference: linear = 10x). Pixel detectors decode each
image to a 128 px thumbnail (JPEG draft decoding), so their speed barely depends on the
original size; they are timed on 512x512 JPEGs.

    python benchmarks/audit_scale.py [--images 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from lorastudio.audit.rules import TokenBudget, build_entries, run_text_rules
from lorastudio.captions.vocab import load_vocabulary

TRIGGER = "ohwx_kfood_style"
DISHES = ["yangnyeom chicken", "tteokbokki", "bibimbap", "japchae", "kimchi jjigae", "bulgogi", "gimbap"]


def synthetic_captions(vocab, n: int, seed: int = 0) -> list[str]:
    """Golden-order captions drawn from the vocabulary, with a few planted problems."""
    rng = np.random.default_rng(seed)
    by_slot = {s: [a.phrase for a in vocab.attributes if a.slot == s] for s in (3, 4, 5)}
    out = []
    for i in range(n):
        parts = [TRIGGER, f"a photo of {DISHES[i % len(DISHES)]}"]
        for slot, k in ((3, 1), (4, 4), (5, 2)):
            parts += list(rng.choice(by_slot[slot], size=k, replace=False))
        if i % 50 == 0:
            parts.append(parts[2])  # a repeated phrase
        if i % 97 == 0:
            parts = parts[1:] + [TRIGGER]  # trigger not first
        out.append(", ".join(parts))
    return out


def time_text_rules(vocab, budget, n: int) -> tuple[float, int]:
    captions = synthetic_captions(vocab, n)
    start = time.perf_counter()
    entries = build_entries(((f"i{i}", c, c) for i, c in enumerate(captions)), vocab)
    findings = run_text_rules(entries, vocab, trigger=TRIGGER, budget=budget)
    return time.perf_counter() - start, len(findings)


def time_pixels(vocab, count: int) -> float:
    from PIL import Image

    from lorastudio.audit.detectors import pixel

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(count):
            base = rng.uniform(0, 1, size=(16, 16, 3))
            img = Image.fromarray((base * 255).astype(np.uint8)).resize((512, 512), Image.BICUBIC)
            path = Path(tmp) / f"{i}.jpg"
            img.save(path, quality=90)
            paths.append(path)
        start = time.perf_counter()
        pixel.detect(paths, [str(i) for i in range(count)], vocab)
        return count / (time.perf_counter() - start)


def verdict(ratio: float) -> str:
    return "OK" if ratio <= 12 else "TOO SLOW"


def main() -> None:
    """Print the figures and the scaling ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="images for the pixel detector timing")
    parser.add_argument("--no-100k", action="store_true", help="skip the 100,000-caption run (about a minute)")
    args = parser.parse_args()
    from lorastudio.captions.tokens import load_tokenizers
    from lorastudio.models.tiny import tokenizer_files_dir

    vocab = load_vocabulary(("food.korean",))
    budget = TokenBudget(load_tokenizers(tokenizer_files_dir()), approximate=True, source="tiny")
    time_text_rules(vocab, budget, 200)  # warm-up: regex compilation, tokenizer caches
    # The same statistic (best of 3) for both sizes, so noise does not bias the ratio.
    t1k, f1k = min(time_text_rules(vocab, budget, 1_000) for _ in range(3))
    t10k, f10k = min(time_text_rules(vocab, budget, 10_000) for _ in range(3))
    print(f"text rules, 1,000 captions:   {t1k:.3f} s ({1_000 / t1k:,.0f} captions/s, {f1k} findings)")
    print(f"text rules, 10,000 captions:  {t10k:.3f} s ({10_000 / t10k:,.0f} captions/s, {f10k} findings)")
    ratio = t10k / t1k
    print(f"10k / 1k time ratio: {ratio:.2f}x (linear = 10x; limit 12x) -> {verdict(ratio)}")
    if not args.no_100k:
        t100k, f100k = min(time_text_rules(vocab, budget, 100_000) for _ in range(2))
        print(f"text rules, 100,000 captions: {t100k:.3f} s ({100_000 / t100k:,.0f} captions/s, {f100k} findings)")
        ratio = t100k / t10k
        print(f"100k / 10k time ratio: {ratio:.2f}x (linear = 10x; limit 12x) -> {verdict(ratio)}")
    ips = time_pixels(vocab, args.images)
    print(f"pixel detectors: {ips:.1f} images/s on 512x512 JPEGs ({args.images} images)")


if __name__ == "__main__":
    main()
