"""How good is a toy base model? Prompt following and VAE fidelity, scored by the readers.

    python -m lorastudio.toyworld.base_quality [MODEL_DIR] [--seeds 4]

prints the share of generated images whose background and dish match the prompt, with and
without a trigger word the model never saw, and the readers' accuracy after a VAE round
trip. The figures quoted in the toy-world README section come from here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lorastudio.toyworld.readers import accuracy, read_background, read_dish
from lorastudio.toyworld.scenes import BACKGROUND_PHRASES, DISHES

UNSEEN_PREFIX = "ohwx_kfood_style"


def load_pipeline(model_dir: Path | str):
    """The model as a float32 StableDiffusionPipeline with a quiet progress bar."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(model_dir), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def following_prompts(seeds: int, prefix: str | None = None) -> list[tuple[str, int, str, str]]:
    """(prompt, seed, background, dish) for every background x dish x seed."""
    rows = []
    for background, phrase in sorted(BACKGROUND_PHRASES.items()):
        for dish in sorted(DISHES):
            text = f"a photo of {dish}, {phrase}"
            rows += [(f"{prefix}, {text}" if prefix else text, seed, background, dish) for seed in range(seeds)]
    return rows


def generate_rows(pipe, rows, *, steps: int = 15, cfg: float = 5.0, batch: int = 32, desc: str | None = None) -> list:
    """Render rows in batches, one seeded generator per image (a progress bar when `desc` is set)."""
    import torch
    from tqdm import tqdm

    images = []
    with tqdm(total=len(rows), desc=desc, unit="img", disable=desc is None) as bar:
        for i in range(0, len(rows), batch):
            chunk = rows[i : i + batch]
            with torch.no_grad():
                images += pipe([r[0] for r in chunk], height=64, width=64, num_inference_steps=steps,
                               guidance_scale=cfg, generator=[torch.Generator().manual_seed(r[1]) for r in chunk]).images
            bar.update(len(chunk))
    return images


def prompt_following(pipe, seeds: int = 2, prefix: str | None = None, steps: int = 15,
                     desc: str | None = None) -> dict[str, float]:
    """Share of images whose background / dish / both match the prompt."""
    rows = following_prompts(seeds, prefix)
    images = generate_rows(pipe, rows, steps=steps, desc=desc)
    bg = [read_background(im) == row[2] for im, row in zip(images, rows)]
    dish = [read_dish(im) == row[3] for im, row in zip(images, rows)]
    return {"background": float(np.mean(bg)), "dish": float(np.mean(dish)),
            "both": float(np.mean([a and b for a, b in zip(bg, dish)])), "n": len(rows)}


def vae_roundtrip_accuracy(pipe, n: int = 200, seed: int = 9) -> dict[str, float]:
    """Reader accuracy on generator images after encode -> decode with the model's VAE."""
    import torch
    from PIL import Image

    vae = pipe.vae

    def roundtrip(images):
        x = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            y = vae.decode(vae.encode(x).latent_dist.mean).sample
        y = ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return [Image.fromarray(a) for a in y]

    return accuracy(n=n, seed=seed, transform=roundtrip)


def main(argv: list[str] | None = None) -> None:
    """Print prompt following (with and without an unseen trigger) and VAE fidelity."""
    import torch

    from lorastudio.toyworld.pretrain import BASE_DIR

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", type=Path, default=BASE_DIR)
    ap.add_argument("--seeds", type=int, default=4, help="Seeds per background x dish prompt (15 prompts).")
    ap.add_argument("--prefix", action="append", default=None,
                    help=f"A trigger word the model never saw (repeatable; default {UNSEEN_PREFIX}).")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    pipe = load_pipeline(args.model)
    plain = prompt_following(pipe, args.seeds, desc="without prefix")
    print(f"prompt following, {plain['n']} images each: without prefix {plain}", flush=True)
    for prefix in args.prefix or [UNSEEN_PREFIX]:
        prefixed = prompt_following(pipe, args.seeds, prefix, desc=f"with '{prefix}'")
        print(f"with unseen prefix '{prefix}': {prefixed}", flush=True)
    print(f"readers after a VAE round trip: {vae_roundtrip_accuracy(pipe)}")


if __name__ == "__main__":
    main()
