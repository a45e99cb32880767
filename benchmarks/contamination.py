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

Arms (d)-(f) learn the trigger instead of leaning on a rare token with a frozen text
encoder, each once with trigger + subject captions (_a) and once with golden captions (_b):
  (d) textual inversion only (2 vectors, initialised from the class noun "food");
  (e) pivotal: TI for the first half of the steps, then a UNet LoRA with the vectors frozen;
  (f) DreamBooth-lite: the full toy UNet, with the regularization images of (c).

    python benchmarks/contamination.py [--seeds 17] [--steps 600] [--arms a,b,c,d,e,f] [--out /tmp/contam]

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


# What each learned-trigger arm changes in the LoRA config of (a)-(c).
METHOD_ARMS = {
    "d": {"train": {"method": "ti"}, "ti": {"trigger": TRIGGER, "num_vectors": 2, "init": "food", "lr": 5e-3},
          "network": {"train_text_encoder": False}},
    "e": {"train": {"method": "pivotal"}, "ti": {"trigger": TRIGGER, "num_vectors": 2, "init": "food", "lr": 5e-3, "pivot_fraction": 0.5},
          "network": {"train_text_encoder": False}},
    "f": {"train": {"method": "dreambooth", "lr": 5e-5}, "network": {"train_text_encoder": False},
          "dreambooth": {"single_file": False, "export_dtype": "float32"}},
}


def train(name: str, base: Path, dataset: Path, reg: Path | None, out: Path, steps: int, method: dict | None = None) -> Path:
    """Train one model through the real `lorastudio train` command; returns what `score` loads:
    the LoRA's diffusers dir, a TI / pivotal run's final dir, or a DreamBooth model folder."""
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
    for section, values in (method or {}).items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path = out / f"train_{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    code = run_cli(["train", str(path), "--no-progress", "--skip-audit"])
    if code != 0:
        sys.exit(f"training {name} failed with exit code {code}")
    final = out / f"run_{name}" / "final"
    kind = (method or {}).get("train", {}).get("method", "lora")
    return {"lora": final / "diffusers", "dreambooth": final / "model"}.get(kind, final)


def load_model(base: Path, name: str, trained: Path | None):
    """The pipeline to score: base, base + LoRA, base + embedding (+ LoRA), or the fine-tuned model."""
    import torch
    from diffusers import StableDiffusionPipeline

    from lorastudio.evaluation.loading import apply_loras, lora_specs

    dreambooth = trained is not None and (trained / "model_index.json").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(str(trained if dreambooth else base), dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    if trained is not None and not dreambooth:
        if name[0] in "de":
            apply_loras(pipe, lora_specs([str(trained)]))  # our loader: the embedding, and the LoRA if any
        else:
            pipe.load_lora_weights(str(trained))
    return pipe


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
    """Build the datasets, train and score each chosen arm after the base model, print the table."""
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/lorastudio-contamination"))
    ap.add_argument("--base", type=Path, default=None, help="Base model folder (default: the shipped toy model).")
    ap.add_argument("--seeds", type=int, default=17)
    ap.add_argument("--steps", type=int, default=600, help="LoRA training steps (same for a, b, c).")
    ap.add_argument("--sample-steps", type=int, default=15)
    ap.add_argument("--arms", default="a,b,c,d,e,f", help="Comma list of arms; d, e, f each train _a (trigger+subject) and _b (golden).")
    ap.add_argument("--no-base", action="store_true", help="Do not score the base model (a second process scoring other arms).")
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
    arms = args.arms.split(",")
    plan = {"a": (ds_a, None, None), "b": (ds_b, None, None), "c": (ds_b, reg, None)}
    for arm in ("d", "e", "f"):
        arm_reg = reg if arm == "f" else None
        plan[f"{arm}_a"] = (ds_a, arm_reg, METHOD_ARMS[arm])
        plan[f"{arm}_b"] = (ds_b, arm_reg, METHOD_ARMS[arm])
    chosen = [name for name in plan if name.split("_")[0] in arms]
    results = {}
    # Train and score one arm at a time, writing results.json after each, so a run cut short
    # still leaves every finished arm's rates.
    for name in ([] if args.no_base else ["base"]) + chosen:
        trained = None if name == "base" else train(name, base, *plan[name][:2], args.out, args.steps, plan[name][2])
        print(f"scoring {name}: {2 * len(HELD_OUT) * len(DISHES) * args.seeds} images ({time.time() - start:.0f} s so far)", flush=True)
        results[name] = score(load_model(base, name, trained), args.seeds, args.sample_steps)
        print(f"  {name}: " + ", ".join(f"{k} {_rate(results[name][k], results[name]['n'])}" for k in ("leak", "style", "follow", "bleed")), flush=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    n = next(iter(results.values()))["n"]
    half = 1.96 * math.sqrt(0.25 / n)
    print(f"\nstyle contamination, {n} images per rate ({args.seeds} seeds x 4 backgrounds x 3 dishes); "
          f"95% interval of a rate <= +-{half:.0%}; LoRA steps {args.steps}; wall {time.time() - start:.0f} s")
    labels = {"base": "base model", "a": "(a) trigger+subject", "b": "(b) golden captions", "c": "(c) golden + reg",
              "d_a": "(d) TI, trigger+subject", "d_b": "(d) TI, golden", "e_a": "(e) pivotal, trig+subj",
              "e_b": "(e) pivotal, golden", "f_a": "(f) DB-lite, trig+subj", "f_b": "(f) DB-lite, golden"}
    print(f"{'model':26} {'leak':>12} {'style':>12} {'follow':>12} {'bleed':>12}   (rate [95% Wilson interval])")
    for name, r in results.items():
        cells = " ".join(f"{_rate(r[k], r['n']):>12}" for k in ("leak", "style", "follow", "bleed"))
        print(f"{labels[name]:26} {cells}")


def wilson(rate: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a rate over n images."""
    z = 1.96
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _rate(rate: float, n: int) -> str:
    low, high = wilson(rate, n)
    return f"{rate:.0%} [{low:.0%}-{high:.0%}]"


if __name__ == "__main__":
    main()
