"""Style contamination, measured: what captions and prior preservation do to a style LoRA.

Twenty toy images of one style (glossy dishes), all on a black background with sesame
seeds. Three LoRAs with identical settings on the shipped toy base model:
  (a) captions `trigger, a photo of DISH` only;
  (b) golden-order captions that name vessel, garnish, background and lighting (not the
      style);
  (c) (b) plus regularization images (prior preservation, data.prior_loss_weight).
Held-out prompts ask for other backgrounds and another garnish
(`trigger, a photo of tteokbokki, chopped green onions, blue background`), for several
backgrounds, dishes and seeds, and the same prompts without the trigger. The attribute
readers score every image:
  leak   = black background or sesame seeds despite the prompt (trigger prompts);
  style  = glossy highlight present (trigger prompts);
  follow = background and dish as asked (trigger prompts);
  bleed  = gloss, black background or sesame in prompts WITHOUT the trigger.

    python benchmarks/contamination.py [--seeds 17] [--steps 600] [--out /tmp/contam]

With --seeds 17 each rate is over 4 backgrounds x 3 dishes x 17 seeds = 204 images: the
95% interval of a rate is at most +-7 points, of a difference of two rates about +-10.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path

import yaml

from lorastudio.data.manifest import write_dataset_json, write_manifest, write_sidecar
from lorastudio.toyworld.demo import run_cli
from lorastudio.toyworld.pretrain import shipped_base_dir
from lorastudio.toyworld.readers import read_scene
from lorastudio.toyworld.scenes import DISHES, SceneSpec, golden_caption, random_spec, render

TRIGGER = "ohwx_kfood_style"
HELD_OUT = {"blue background": "blue backdrop", "white background": "white",
            "on a wooden table": "wooden table", "white marble surface": "marble"}


def style_specs(n: int, seed: int = 0) -> list[SceneSpec]:
    """The style set: glossy, black background, sesame seeds; vessel, dish, light vary."""
    rng = random.Random(seed)
    return [random_spec(rng, background="black", garnish="sesame seeds", gloss=True,
                        lighting=rng.choice(["neutral", "warm"])) for _ in range(n)]


def write_dataset(root: Path, specs: list[SceneSpec], captions: list[str], seed: int) -> Path:
    """A dataset dir (manifest.jsonl, images/, sidecars) of 64x64 PNG scenes."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i, (spec, caption) in enumerate(zip(specs, captions)):
        rid = f"img{i:03d}"
        path = root / "images" / f"{rid}.png"
        render(spec, 64, 64, seed=seed * 10_007 + i).save(path)
        rec = {"id": rid, "file": f"images/{rid}.png", "source": str(path),
               "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "orig_width": 64, "orig_height": 64,
               "width": 64, "height": 64, "crop": [0, 0, 64, 64], "repeats": 1, "flags": [], "caption_text": caption}
        records.append(rec)
        write_sidecar(root, rec)
    write_manifest(root, records)
    write_dataset_json(root, {"resolution": 64, "buckets": ["64x64"], "trigger": TRIGGER})
    return root


def train(name: str, base: Path, dataset: Path, reg: Path | None, out: Path, steps: int) -> Path:
    """Train one LoRA through the real `lorastudio train` command; returns its diffusers dir."""
    data = {"datasets": [str(dataset)]}
    if reg is not None:
        data.update(regularization=str(reg), prior_loss_weight=1.0)
    cfg = {"model": {"family": "sd15", "path": str(base)}, "data": data,
           # The text encoder is adapted too: with a UNet-only LoRA of this size the toy model
           # learned the dark background but never the gloss in 1,000 steps (style 0%).
           "network": {"rank": 4, "alpha": 4.0, "targets": "attn", "train_text_encoder": True},
           "train": {"max_steps": steps, "batch_size": 4, "lr": 2e-3, "seed": 0, "cache": "memory"},
           "sample": {"at_start": False, "prompts": []}, "save": {"every_n_steps": None, "keep_last": 1},
           "output_dir": str(out / f"run_{name}"), "logging": {"every_n_steps": 50, "tensorboard": False}}
    path = out / f"train_{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    code = run_cli(["train", str(path), "--no-progress", "--skip-audit"])
    if code != 0:
        sys.exit(f"training {name} failed with exit code {code}")
    return out / f"run_{name}" / "final" / "diffusers"


def prompts(seeds: int, trigger: bool) -> list[tuple[str, int, str, str]]:
    """(prompt, seed, asked background, asked dish) for every held-out combination."""
    rows = []
    for phrase, background in HELD_OUT.items():
        for dish in sorted(DISHES):
            text = f"a photo of {dish}, chopped green onions, {phrase}"
            rows += [((f"{TRIGGER}, " if trigger else "") + text, s, background, dish) for s in range(seeds)]
    return rows


def render_batch(pipe, rows, steps: int, batch: int = 64) -> list:
    """Generate every row (seeded per image) in batches."""
    import torch

    images = []
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        gens = [torch.Generator().manual_seed(seed) for _, seed, _, _ in chunk]
        with torch.no_grad():
            images += pipe([r[0] for r in chunk], height=64, width=64, num_inference_steps=steps, guidance_scale=5.0,
                           generator=gens).images
    return images


def score(pipe, seeds: int, steps: int) -> dict[str, float]:
    """The four rates for one model."""
    with_t, without_t = prompts(seeds, True), prompts(seeds, False)
    reads_t = [read_scene(im) for im in render_batch(pipe, with_t, steps)]
    reads_n = [read_scene(im) for im in render_batch(pipe, without_t, steps)]
    n = len(reads_t)
    confounder = lambda r: r.background == "black" or r.garnish == "sesame seeds"  # noqa: E731
    return {
        "leak": sum(confounder(r) for r in reads_t) / n,
        "style": sum(r.gloss for r in reads_t) / n,
        "follow": sum(r.background == bg and r.dish == dish for r, (_, _, bg, dish) in zip(reads_t, with_t)) / n,
        "bleed": sum(r.gloss or confounder(r) for r in reads_n) / len(reads_n),
        "n": n,
    }


def main() -> None:
    """Build the three datasets, train three LoRAs, score base + LoRAs, print the table."""
    import torch
    from diffusers import StableDiffusionPipeline

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/lorastudio-contamination"))
    ap.add_argument("--base", type=Path, default=None, help="Base model folder (default: the shipped toy model).")
    ap.add_argument("--seeds", type=int, default=17)
    ap.add_argument("--steps", type=int, default=600, help="LoRA training steps (same for a, b, c).")
    ap.add_argument("--sample-steps", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = args.base or shipped_base_dir()
    if base is None:
        sys.exit("no base model: run `python -m lorastudio.toyworld.pretrain` first or pass --base")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    specs = style_specs(20)
    ds_a = write_dataset(args.out / "ds_a", specs, [golden_caption(s, TRIGGER, "minimal") for s in specs], 0)
    ds_b = write_dataset(args.out / "ds_b", specs, [golden_caption(s, TRIGGER, "objective") for s in specs], 0)
    rng = random.Random(99)
    reg_specs = [random_spec(rng) for _ in range(40)]
    reg = write_dataset(args.out / "reg", reg_specs, [golden_caption(s) for s in reg_specs], 1)
    loras = {"a": train("a", base, ds_a, None, args.out, args.steps),
             "b": train("b", base, ds_b, None, args.out, args.steps),
             "c": train("c", base, ds_b, reg, args.out, args.steps)}
    results = {}
    for name in ("base", "a", "b", "c"):
        print(f"scoring {name}: {2 * len(HELD_OUT) * len(DISHES) * args.seeds} images ({time.time() - start:.0f} s so far)", flush=True)
        pipe = StableDiffusionPipeline.from_pretrained(str(base), dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        if name != "base":
            pipe.load_lora_weights(str(loras[name]))
        results[name] = score(pipe, args.seeds, args.sample_steps)
    n = results["base"]["n"]
    half = 1.96 * math.sqrt(0.25 / n)
    print(f"\nstyle contamination, {n} images per rate ({args.seeds} seeds x 4 backgrounds x 3 dishes); "
          f"95% interval of a rate <= +-{half:.0%}; LoRA steps {args.steps}; wall {time.time() - start:.0f} s")
    labels = {"base": "base model", "a": "(a) trigger+subject", "b": "(b) golden captions", "c": "(c) golden + reg"}
    print(f"{'model':24} {'leak':>6} {'style':>6} {'follow':>7} {'bleed':>6}")
    for name, r in results.items():
        print(f"{labels[name]:24} {r['leak']:6.0%} {r['style']:6.0%} {r['follow']:7.0%} {r['bleed']:6.0%}")
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
