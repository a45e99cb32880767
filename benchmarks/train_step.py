"""Seconds per training step and peak RSS: `lorastudio train` vs a diffusers-example loop.

Model: SD1.5 dimensions with random weights (build_tiny_pipeline("sd15", size="full"),
built once and cached under /tmp). Batch 1, rank 4, attention targets, fp32 on CPU.
Measured at 512 px and 256 px, each in its own process so peak RSS is per run:

- lorastudio: `lorastudio train` with caches on (latents + text embeddings; VAE and text
  encoder released once cached). Steady state = median of the steps after warm-up, from
  metrics.jsonl. The one-time cache cost is reported separately.
- reference: what diffusers' examples/text_to_image/train_text_to_image_lora.py does every
  step: decode the image, VAE-encode it, text-encode the caption, UNet forward/backward,
  AdamW step.
- lower bound: the UNet forward/backward and the optimizer step alone.

Usage: python benchmarks/train_step.py [--warmup 2] [--steps 3] [--res 512 256]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("LORASTUDIO_BENCH_DIR", "/tmp/lorastudio-bench"))
MODEL = ROOT / "sd15-full"
CAPTION = "ohwx_kfood_style, a photo of bibimbap, top-down shot, in a stone bowl, warm light"


def ensure_model() -> Path:
    """Build the SD1.5-size random model once."""
    if not (MODEL / "model_index.json").is_file():
        from lorastudio.models.tiny import build_tiny_pipeline

        print(f"building SD1.5-size model in {MODEL} (once) ...", flush=True)
        build_tiny_pipeline("sd15", MODEL, seed=0, size="full")
    return MODEL


def ensure_dataset(res: int) -> Path:
    """A 4-image dataset dir at `res` x `res`."""
    import numpy as np
    from PIL import Image

    from lorastudio.data.manifest import write_manifest, write_sidecar

    root = ROOT / f"ds{res}"
    if (root / "manifest.jsonl").is_file():
        return root
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (res, res, 3), dtype=np.uint8)).save(root / "images" / f"i{i}.png")
        rec = {"id": f"i{i}", "file": f"images/i{i}.png", "source": f"i{i}.png", "sha256": f"{i:064x}", "orig_width": res,
               "orig_height": res, "width": res, "height": res, "crop": [0, 0, res, res], "caption_text": CAPTION}
        write_sidecar(root, rec)
        records.append(rec)
    write_manifest(root, records)
    return root


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def run_lorastudio(res: int, steps: int, warmup: int) -> dict:
    """`lorastudio train` in a subprocess with a fresh disk cache."""
    import shutil

    import yaml

    run_dir, cache = ROOT / f"run{res}", ROOT / f"cache{res}"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    cfg = {
        "model": {"family": "sd15", "path": str(MODEL)},
        "data": {"datasets": [str(ensure_dataset(res))]},
        "network": {"rank": 4, "alpha": 4.0, "targets": "attn"},
        "train": {"max_steps": warmup + steps, "batch_size": 1, "lr": 1e-4, "cache": "disk", "cache_dir": str(cache), "max_grad_norm": 1.0},
        "sample": {"at_start": False, "prompts": []},
        "save": {"every_n_steps": None, "formats": ["kohya"]},
        "output_dir": str(run_dir),
        "logging": {"every_n_steps": 1, "tensorboard": False},
    }
    cfg_path = ROOT / f"bench{res}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "lorastudio", "train", str(cfg_path), "--no-progress", "--skip-audit"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"lorastudio train failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    cache_s = float(re.search(r"caches ready in ([\d.]+)s", proc.stderr).group(1))
    return {"s_per_step": statistics.median(r["s_per_step"] for r in rows[warmup:]), "peak_rss_gb": rows[-1]["peak_rss_mb"] / 1024, "cache_s": cache_s}


def child(kind: str, res: int, steps: int, warmup: int) -> None:
    """Reference or lower-bound loop in this process; prints one JSON line."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer

    from lorastudio.models.lora import attach_lora, unet_target_modules

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(MODEL, subfolder="unet").requires_grad_(False)
    attach_lora(unet, rank=4, alpha=4.0, target_modules=unet_target_modules(unet, "attn"))
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    sched = DDPMScheduler.from_pretrained(MODEL, subfolder="scheduler")
    if kind == "reference":
        vae = AutoencoderKL.from_pretrained(MODEL, subfolder="vae").requires_grad_(False)
        te = CLIPTextModel.from_pretrained(MODEL, subfolder="text_encoder").requires_grad_(False)
        tok = CLIPTokenizer.from_pretrained(MODEL, subfolder="tokenizer")
        image_path = ensure_dataset(res) / "images" / "i0.png"
    else:
        fixed_latents = torch.randn(1, 4, res // 8, res // 8)
        fixed_text = torch.randn(1, 77, 768)
    times, encode_times = [], []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        if kind == "reference":
            pixels = torch.from_numpy(np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
            with torch.no_grad():
                latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
                ids = tok([CAPTION], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
                text = te(ids)[0]
        else:
            latents, text = fixed_latents, fixed_text
        encode_times.append(time.perf_counter() - start)
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (1,))
        pred = unet(sched.add_noise(latents, noise, t), t, encoder_hidden_states=text).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    # The encode share, timed inside the same steps, gives a speed-up estimate that does not
    # depend on how busy the machine was while the other runs were measured.
    encode_share = statistics.median(e / t for e, t in zip(encode_times[warmup:], times[warmup:], strict=True))
    print(json.dumps({"s_per_step": statistics.median(times[warmup:]), "peak_rss_gb": peak_rss_gb(), "encode_share": encode_share}))


def run_child(kind: str, res: int, steps: int, warmup: int) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--res", str(res), "--steps", str(steps), "--warmup", str(warmup)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--child", choices=["reference", "lower_bound"])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        child(args.child, args.res[0], args.steps, args.warmup)
        return
    ensure_model()
    print(f"torch threads: {os.environ.get('OMP_NUM_THREADS', 'default')}; {args.warmup} warm-up + {args.steps} timed steps (median)", flush=True)
    for res in args.res:
        ours = run_lorastudio(res, args.steps, args.warmup)
        ref = run_child("reference", res, args.steps, args.warmup)
        low = run_child("lower_bound", res, args.steps, args.warmup)
        print(f"\n{res} px, batch 1, rank 4, attn targets, fp32 CPU")
        print(f"  lorastudio train : {ours['s_per_step']:7.2f} s/step  peak RSS {ours['peak_rss_gb']:.2f} GB  (one-time cache {ours['cache_s']:.1f} s)")
        print(f"  reference loop   : {ref['s_per_step']:7.2f} s/step  peak RSS {ref['peak_rss_gb']:.2f} GB")
        print(f"  lower bound      : {low['s_per_step']:7.2f} s/step  peak RSS {low['peak_rss_gb']:.2f} GB")
        print(f"  speed-up vs reference: {ref['s_per_step'] / ours['s_per_step']:.2f}x (target >= 1.4x at 512 px); "
              f"over lower bound: {100 * (ours['s_per_step'] / low['s_per_step'] - 1):+.1f}% (target <= +10%); "
              f"RSS vs reference: {ours['peak_rss_gb'] / ref['peak_rss_gb']:.2f}x")
        print(f"  same-process check: the reference spends {100 * ref['encode_share']:.0f}% of each step encoding, "
              f"so removing it is worth {1 / (1 - ref['encode_share']):.2f}x at equal machine load", flush=True)


if __name__ == "__main__":
    main()
