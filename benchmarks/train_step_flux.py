"""Seconds per Flux LoRA training step and peak RSS: `lorastudio train` vs a diffusers-example loop.

Model: a FLUX.1 transformer at the real width (3072 = 24 heads x 128, joint 4096, pooled 768,
guidance embedding, RoPE axes 16/56/56) with a few blocks (default 2 double + 4 single),
the real FLUX.1 VAE and CLIP-L shapes, and a T5 at T5-XXL width (d_model 4096, 64 heads,
d_ff 10240) but only `--t5-layers` layers; random weights, built once under /tmp. Batch 1,
rank 16, alpha 16, the `attn` preset (the diffusers example's 12 + 3 modules per block),
fp32 on the CPU, T5 at 512 tokens (dev). `--precision bf16` runs all three rows the way the
example runs with --mixed_precision bf16: frozen weights in bf16, LoRA weights in fp32, bf16
autocast. lorastudio runs train.mixed_precision bf16 with model.dtype float32, since it keeps
bf16 Flux base weights for CUDA GPUs: its frozen weights stay fp32 under the autocast. On a
CPU bf16 wants bf16 instructions (avx512_bf16 / AMX). Each row runs in its own process (own peak RSS):

- lorastudio: `lorastudio train` with latent + text caches (VAE and text encoders released
  once cached). Median s/step after warm-up from metrics.jsonl; the cache cost is separate.
- reference: what diffusers' examples/dreambooth/train_dreambooth_lora_flux.py does each step
  with per-image captions and no --cache_latents: VAE-encode the image, CLIP + T5 encode the
  caption, pack, transformer forward/backward, clip grad 1.0, AdamW step.
- lower bound: the transformer forward/backward + AdamW alone, inputs prepared once.

Targets (issue 12): lorastudio >= 1.3x the reference, within 10% of the lower bound.
Heavy on a 2-core CPU: run it under `flock /tmp/heavy.lock`.

Usage: python benchmarks/train_step_flux.py [--res 512] [--warmup 1] [--steps 2] [--double 2 --single 4]
       python benchmarks/train_step_flux.py --res 512 --steps 5 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("LORASTUDIO_BENCH_DIR", "/tmp/lorastudio-bench"))
CAPTION = "ohwx_kfood_style, a photo of bibimbap, top-down shot, in a stone bowl, warm light"
RANK, T5_LEN = 16, 512


def model_dir(args: argparse.Namespace) -> Path:
    return ROOT / f"flux-{args.double}d{args.single}s-t5x{args.t5_layers}"


def ensure_model(args: argparse.Namespace) -> Path:
    """Build the real-width Flux folder once (random weights)."""
    out = model_dir(args)
    if (out / "model_index.json").is_file():
        return out
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    from lorastudio.models.tiny_flux import build_t5_tokenizer, scheduler_config
    from lorastudio.models.tokenizer import tokenizer_files_dir

    from lorastudio.models.tiny import _tokenizer_ids

    clip_ids = {k: v for k, v in _tokenizer_ids().items() if k != "vocab_size"}
    print(f"building the Flux benchmark model in {out} (once) ...", flush=True)
    torch.manual_seed(0)
    parts = {
        "transformer": diffusers.FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=args.double, num_single_layers=args.single, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
            axes_dims_rope=(16, 56, 56)),
        "vae": diffusers.AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
            sample_size=1024, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159),
        "text_encoder": CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                                     num_hidden_layers=12, num_attention_heads=12, projection_dim=768,
                                                     max_position_embeddings=77, **clip_ids)),
        "text_encoder_2": T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=args.t5_layers,
                                                  num_heads=64, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1)),
        "scheduler": diffusers.FlowMatchEulerDiscreteScheduler(**scheduler_config("dev")),
        "tokenizer": CLIPTokenizer.from_pretrained(str(tokenizer_files_dir())),
        "tokenizer_2": build_t5_tokenizer(),
    }
    diffusers.FluxPipeline(**parts).save_pretrained(str(out), safe_serialization=True)
    return out


def ensure_dataset(res: int) -> Path:
    """Four `res` x `res` images with one caption each."""
    import numpy as np
    from PIL import Image

    from lorastudio.data.manifest import write_manifest, write_sidecar

    root = ROOT / f"flux-ds{res}"
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


def run_lorastudio(args: argparse.Namespace) -> dict:
    import shutil

    import yaml

    run_dir, cache = ROOT / f"flux-run{args.res}", ROOT / f"flux-cache{args.res}"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    cfg = {
        "model": {"family": "flux", "path": str(model_dir(args)), "dtype": "float32"},
        "data": {"datasets": [str(ensure_dataset(args.res))]},
        "network": {"rank": RANK, "alpha": float(RANK), "targets": "attn"},
        "train": {"max_steps": args.warmup + args.steps, "batch_size": 1, "lr": 1e-4, "cache": "disk", "cache_dir": str(cache),
                  "max_grad_norm": 1.0, "mixed_precision": "bf16" if _bf16(args) else "no"},
        "flux": {"t5_max_length": T5_LEN},
        "sample": {"at_start": False, "prompts": []},
        "save": {"every_n_steps": None, "formats": ["diffusers"]},
        "output_dir": str(run_dir),
        "logging": {"every_n_steps": 1, "tensorboard": False},
    }
    cfg_path = ROOT / f"flux-bench{args.res}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "lorastudio", "train", str(cfg_path), "--no-progress", "--skip-audit"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"lorastudio train failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    import re

    cache_s = float(re.search(r"caches ready in ([\d.]+)s", proc.stderr).group(1))
    return {"s_per_step": statistics.median(r["s_per_step"] for r in rows[args.warmup:]),
            "peak_rss_gb": rows[-1]["peak_rss_mb"] / 1024, "cache_s": cache_s}


def _bf16(args: argparse.Namespace) -> bool:
    return args.precision == "bf16"


def _autocast(args: argparse.Namespace):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=_bf16(args))


def _load(args: argparse.Namespace, with_encoders: bool):
    import torch
    from diffusers import FluxPipeline

    from lorastudio.models.families import get_family
    from lorastudio.models.lora import attach_lora

    pipe = FluxPipeline.from_pretrained(str(model_dir(args)), local_files_only=True,
                                        **({} if with_encoders else {"text_encoder": None, "text_encoder_2": None}))
    for part in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        if part is not None:
            part.requires_grad_(False)
            if _bf16(args):  # as the example: frozen weights in the mixed-precision dtype
                part.to(torch.bfloat16)
    torch.manual_seed(0)
    targets = get_family("flux").target_modules(pipe.transformer, "attn")
    attach_lora(pipe.transformer, rank=RANK, alpha=float(RANK), target_modules=targets)
    params = [p for p in pipe.transformer.parameters() if p.requires_grad]
    for p in params:  # trainable (LoRA) weights stay fp32, as the example's cast_training_params
        p.data = p.data.float()
    return pipe, params, torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)


def _pixels(res: int):
    import numpy as np
    import torch
    from PIL import Image

    img = Image.open(ensure_dataset(res) / "images" / "i0.png").convert("RGB")
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]


def _transformer_step(pipe, params, optimizer, latents, prompt_embeds, pooled, gen) -> None:
    """One step the way the diffusers Flux example writes it (shared by reference and floor)."""
    import torch
    from diffusers import FluxPipeline

    b, c, h, w = latents.shape
    noise = torch.randn(latents.shape, generator=gen)
    sigma = torch.rand((b,), generator=gen)
    noisy = (1 - sigma.view(-1, 1, 1, 1)) * latents + sigma.view(-1, 1, 1, 1) * noise
    packed = FluxPipeline._pack_latents(noisy, b, c, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32)
    txt_ids = torch.zeros(prompt_embeds.shape[1], 3)
    pred = pipe.transformer(hidden_states=packed, timestep=sigma, guidance=torch.ones(b), pooled_projections=pooled,
                            encoder_hidden_states=prompt_embeds, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
    pred = FluxPipeline._unpack_latents(pred, h * 8, w * 8, 8)
    loss = torch.mean(((pred.float() - (noise - latents).float()) ** 2).reshape(b, -1), 1).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_loop(args: argparse.Namespace, role: str) -> dict:
    """reference (encode every step) or floor (transformer + optimizer only), in this process."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    pipe, params, optimizer = _load(args, with_encoders=True)
    pixels, gen = _pixels(args.res), torch.Generator().manual_seed(0)

    def encode():
        with torch.no_grad(), _autocast(args):
            z = pipe.vae.encode(pixels).latent_dist.sample(generator=gen)
            latents = (z - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
            embeds, pooled, _ = pipe.encode_prompt(CAPTION, prompt_2=CAPTION, max_sequence_length=T5_LEN)
        return latents, embeds, pooled

    fixed = encode() if role == "floor" else None
    if role == "floor":  # the floor holds no encoders, like lorastudio after caching
        pipe.vae = pipe.text_encoder = pipe.text_encoder_2 = None
        import gc

        gc.collect()
    times = []
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        latents, embeds, pooled = fixed if fixed is not None else encode()
        with _autocast(args):
            _transformer_step(pipe, params, optimizer, latents, embeds, pooled, gen)
        times.append(time.perf_counter() - start)
    return {"s_per_step": statistics.median(times[args.warmup:]),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--res", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--double", type=int, default=2)
    parser.add_argument("--single", type=int, default=4)
    parser.add_argument("--t5-layers", type=int, default=2)
    parser.add_argument("--role", choices=["all", "lorastudio", "reference", "floor"], default="all")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: frozen weights in bf16, LoRA in fp32, bf16 autocast, in all three rows")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ROOT.mkdir(parents=True, exist_ok=True)
    ensure_model(args)
    if args.role != "all":
        result = run_lorastudio(args) if args.role == "lorastudio" else run_loop(args, args.role)
        print(json.dumps(result))
        return
    rows = {}
    for role in ("lorastudio", "reference", "floor"):
        cmd = [sys.executable, __file__, "--role", role, *(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "role")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{role} failed:\n{proc.stderr[-3000:]}")
        rows[role] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{role:<11} {rows[role]['s_per_step']:8.2f} s/step  peak RSS {rows[role]['peak_rss_gb']:.2f} GB"
              + (f"  (one-time caches {rows[role]['cache_s']:.1f} s)" if "cache_s" in rows[role] else ""), flush=True)
    ours, ref, floor = (rows[k]["s_per_step"] for k in ("lorastudio", "reference", "floor"))
    print(f"speed-up vs reference: {ref / ours:.2f}x (target >= 1.3x); lorastudio / lower bound: {ours / floor:.3f} "
          f"(target <= 1.10); {args.double} double + {args.single} single blocks, width 3072, {args.res} px, batch 1, "
          f"rank {RANK}, {args.precision}, T5 {T5_LEN} tokens, medians of {args.steps} steps after {args.warmup} warm-up")


if __name__ == "__main__":
    main()
