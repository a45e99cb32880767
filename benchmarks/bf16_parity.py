"""Does bf16 autocast train the same LoRA as fp32? A 200-step toy run in each precision.

The demo's dataset (toy-world photos, prepared and captioned through the real commands) and
the demo's training config on the shipped toy model, run twice with the same seed: once with
`train.mixed_precision: no` and once with `bf16`. Printed: the loss curves' gap (EMA 0.9 of
the per-step loss, mean absolute difference relative to the fp32 curve's mean), the mean
loss over the last half in each precision, the LoRA weights' relative difference, and the
seconds per step of each run. Tolerance for calling bf16 equivalent: curve gap <= 5% and
last-half means within 5% of each other.

    python benchmarks/bf16_parity.py [--steps 200] [--images 12]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TOLERANCE = 0.05


def _cli(args: list[str]) -> None:
    """A lorastudio command in a fresh process; audit may exit 1 (it found errors)."""
    proc = subprocess.run([sys.executable, "-m", "lorastudio", *args], capture_output=True, text=True)
    if proc.returncode not in ((0, 1) if args[0] == "audit" else (0,)):
        raise SystemExit(f"lorastudio {' '.join(args[:2])} failed:\n{proc.stderr[-2000:]}")


def build_dataset(root: Path, images: int) -> Path:
    """Toy photos -> prepare -> caption -> audit --fix, as the demo does."""
    from lorastudio.toyworld.demo import TRIGGER, write_photos

    photos, ds = root / "photos", root / "dataset"
    write_photos(photos, images, (320, 240))
    _cli(["prepare", str(photos), "--out", str(ds), "--resolution", "64", "--square", "--min-side", "64", "--quiet"])
    _cli(["caption", str(ds), "--backend", "manual", "--trigger", TRIGGER, "--overwrite", "--quiet"])
    _cli(["audit", str(ds), "--fix", "--yes", "--quiet"])
    return ds


def train(root: Path, ds: Path, precision: str, steps: int) -> dict:
    """One `lorastudio train` run; its per-step losses, s/step and final LoRA tensors."""
    import yaml
    from safetensors.torch import load_file

    from lorastudio.toyworld.demo import DemoOptions, train_config
    from lorastudio.toyworld.pretrain import BASE_DIR

    run_dir = root / f"run_{precision}"
    cfg = train_config(Path(BASE_DIR), ds, run_dir, DemoOptions(steps=steps))
    cfg["train"]["mixed_precision"] = precision
    cfg["logging"]["every_n_steps"] = 1
    path = root / f"train_{precision}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    _cli(["train", str(path), "--no-progress", "--skip-audit"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    weights = load_file(str(next((run_dir / "final").rglob("*.safetensors"))))
    return {"loss": [r["loss"] for r in rows], "s_per_step": statistics.median(r["s_per_step"] for r in rows[5:]),
            "weights": weights}


def ema(values: list[float], beta: float = 0.9) -> list[float]:
    out, acc = [], values[0]
    for v in values:
        acc = beta * acc + (1 - beta) * v
        out.append(acc)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--images", type=int, default=12)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ds = build_dataset(root, args.images)
        fp32, bf16 = train(root, ds, "no", args.steps), train(root, ds, "bf16", args.steps)
    a, b = ema(fp32["loss"]), ema(bf16["loss"])
    n = min(len(a), len(b))
    gap = statistics.fmean(abs(x - y) for x, y in zip(a[:n], b[:n])) / statistics.fmean(a[:n])
    half = n // 2
    last_a, last_b = statistics.fmean(fp32["loss"][half:n]), statistics.fmean(bf16["loss"][half:n])
    last_gap = abs(last_b - last_a) / last_a
    num = sum(float((fp32["weights"][k].float() - bf16["weights"][k].float()).norm() ** 2) for k in fp32["weights"])
    den = sum(float(fp32["weights"][k].float().norm() ** 2) for k in fp32["weights"])
    ok = gap <= TOLERANCE and last_gap <= TOLERANCE
    print(f"toy model, {args.images} images at 64 px, {n} steps, seed 0; torch {torch.__version__}")
    print(f"  loss curve gap (EMA 0.9, mean |bf16 - fp32| / mean fp32): {100 * gap:.1f}% (tolerance {100 * TOLERANCE:.0f}%)")
    print(f"  last-half mean loss: fp32 {last_a:.4f}, bf16 {last_b:.4f} ({100 * last_gap:.1f}% apart)")
    print(f"  LoRA weights: ||bf16 - fp32|| / ||fp32|| = {(num / den) ** 0.5:.3f}")
    print(f"  s/step: fp32 {fp32['s_per_step']:.3f}, bf16 {bf16['s_per_step']:.3f} "
          f"({fp32['s_per_step'] / bf16['s_per_step']:.2f}x; the toy model is too small for bf16 to pay off)")
    print(f"  verdict: {'within tolerance' if ok else 'OUT OF TOLERANCE'}")


if __name__ == "__main__":
    main()
