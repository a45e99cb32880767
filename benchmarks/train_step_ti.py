"""Textual inversion step time and optimizer memory: lorastudio's TI vs the diffusers TI example's per-step work.

Model: SD1.5 dimensions with random weights (the 49,408 x 768 token table included; built
once under $LORASTUDIO_BENCH_DIR/sd15-full, shared with train_step.py). Batch 1, fp32, CPU,
2 new vectors for the trigger. Both variants run the same text-encoder and UNet
forward/backward; they differ in what diffusers' examples/textual_inversion/textual_inversion.py
does every step and lorastudio does not:

- reference (the example's per-step work): VAE-encode the image, AdamW (weight decay 1e-2)
  over the whole token-embedding matrix, then copy every base row back from a clone;
- lorastudio: latents from the cache (encoded once), the [N, D] new rows spliced into the
  frozen table (`models/embeddings.py`) as the only parameter in AdamW, nothing to restore.

Printed: median s/step over --steps after --warmup, optimizer memory (AdamW moments + the
gradient of what it optimizes), the base rows' bit-identity after the steps, and both ratios.

`--dreambooth` instead runs `lorastudio train` twice on the same model, data and settings
(512 px, batch 1, fp32, lr 1e-4, grad clip 1.0, latents cached, no class images): method lora
(rank 4, attention layers, as benchmarks/train_step.py) and method dreambooth (the full UNet in
AdamW), each step clocked by example_timer.py, and prints s/step, CPU s/step and the peak RSS
of each (the final checkpoint and export are written, then deleted).

    python benchmarks/train_step_ti.py [--res 512] [--steps 3] [--warmup 1]
    python benchmarks/train_step_ti.py --dreambooth [--res 512] [--steps 3] [--warmup 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

ROOT = Path(os.environ.get("LORASTUDIO_BENCH_DIR", "/tmp/lorastudio-bench"))
MODEL = ROOT / "sd15-full"
TRIGGER = "ohwx_kfood_style"
CAPTION = f"{TRIGGER} {TRIGGER}_1, a photo of bibimbap, top-down shot, in a stone bowl, warm light"


def ensure_model() -> Path:
    from lorastudio.models.tiny import build_tiny_pipeline

    if not (MODEL / "model_index.json").is_file():
        print(f"building the SD1.5-size model in {MODEL} (once)", flush=True)
        build_tiny_pipeline("sd15", MODEL, seed=0, size="full")
    return MODEL


def load(model: Path):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(str(model), subfolder="unet").requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(str(model), subfolder="vae").requires_grad_(False)
    te = CLIPTextModel.from_pretrained(str(model), subfolder="text_encoder").requires_grad_(False)
    tok = CLIPTokenizer.from_pretrained(str(model), subfolder="tokenizer")
    sched = DDPMScheduler.from_pretrained(str(model), subfolder="scheduler")
    return unet, vae, te, tok, sched


def optimizer_bytes(opt) -> int:
    """AdamW state plus the gradients of the parameters it steps."""
    import torch

    total = 0
    for group in opt.param_groups:
        for p in group["params"]:
            total += sum(t.numel() * t.element_size() for t in opt.state[p].values() if isinstance(t, torch.Tensor) and t.ndim)
            total += p.numel() * p.element_size()  # its gradient
    return total


def step(unet, te, ids, latents, sched, gen):
    import torch

    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (1,), generator=gen)
    cond = te(ids)[0]
    pred = unet(sched.add_noise(latents, noise, t), t, encoder_hidden_states=cond).sample
    loss = torch.nn.functional.mse_loss(pred, noise)
    loss.backward()
    return loss


def run(kind: str, res: int, steps: int, warmup: int) -> dict:
    import torch

    from lorastudio.models.embeddings import add_trigger, init_rows

    unet, vae, te, tok, sched = load(ensure_model())
    table_rows = te.get_input_embeddings().weight.shape[0]
    if len(tok) < table_rows:  # the built model ships a small tokenizer beside SD1.5's 49,408-row table
        tok.add_tokens([f"<pad{i}>" for i in range(table_rows - len(tok))])
    gen = torch.Generator().manual_seed(0)
    image = torch.rand((1, 3, res, res), generator=gen) * 2 - 1
    base_rows = te.get_input_embeddings().weight.detach().clone()
    if kind == "lorastudio":
        rows = init_rows(te, tok, "food", 2, gen)
        param = add_trigger(te, tok, TRIGGER, rows)
        opt = torch.optim.AdamW([param], lr=5e-3, weight_decay=1e-2)
        with torch.no_grad():
            latents = vae.encode(image).latent_dist.sample(gen) * vae.config.scaling_factor  # the cache, once
    else:
        tok.add_tokens([TRIGGER, f"{TRIGGER}_1"])
        te.resize_token_embeddings(len(tok))
        ids_new = tok.convert_tokens_to_ids([TRIGGER, f"{TRIGGER}_1"])
        table = te.get_input_embeddings().weight
        with torch.no_grad():
            table[ids_new] = table[tok("food", add_special_tokens=False).input_ids[0]].clone()
        table.requires_grad_(True)
        orig = table.detach().clone()
        keep = torch.ones(len(tok), dtype=torch.bool)
        keep[min(ids_new): max(ids_new) + 1] = False
        opt = torch.optim.AdamW([table], lr=5e-3, weight_decay=1e-2)
    ids = tok(CAPTION, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        if kind == "reference":
            with torch.no_grad():
                latents = vae.encode(image).latent_dist.sample(gen) * vae.config.scaling_factor
        step(unet, te, ids, latents, sched, gen)
        opt.step()
        opt.zero_grad(set_to_none=False)
        if kind == "reference":
            with torch.no_grad():
                table[keep] = orig[keep]
        times.append(time.perf_counter() - start)
        print(f"  {kind} step {i + 1}: {times[-1]:.2f} s", flush=True)
    after = te.get_input_embeddings().weight.detach()[: base_rows.shape[0]]
    return {"s_per_step": statistics.median(times[warmup:]), "optimizer_mb": optimizer_bytes(opt) / 2**20,
            "base_rows_identical": bool(torch.equal(after, base_rows))}


def run_method(method: str, res: int, steps: int, warmup: int) -> dict:
    """`lorastudio train` with `method` in a subprocess, each step clocked; the run dir is removed after."""
    import shutil
    import sys

    import yaml
    from train_step import ensure_dataset, run_measured, step_figures

    run_dir, cache = ROOT / f"run-{method}{res}", ROOT / f"cache-{method}{res}"
    cfg = {
        "model": {"family": "sd15", "path": str(ensure_model())},
        "data": {"datasets": [str(ensure_dataset(res))]},
        "network": {"rank": 4, "alpha": 4.0, "targets": "attn"},
        "train": {"method": method, "max_steps": warmup + steps, "batch_size": 1, "lr": 1e-4, "cache": "disk",
                  "cache_dir": str(cache), "max_grad_norm": 1.0, "mixed_precision": "no"},
        "sample": {"at_start": False, "prompts": []},
        "save": {"every_n_steps": None, "formats": ["kohya"], "keep_last": 1},
        "output_dir": str(run_dir),
        "logging": {"every_n_steps": 1, "tensorboard": False},
    }
    if method == "dreambooth":
        cfg["dreambooth"] = {"single_file": False, "export_dtype": "float16"}
    cfg_path = ROOT / f"bench-{method}{res}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    timer = str(Path(__file__).with_name("example_timer.py"))
    try:
        proc, share = run_measured([sys.executable, timer, "--lorastudio", "train", str(cfg_path), "--no-progress", "--skip-audit"])
        if proc.returncode != 0:
            raise SystemExit(f"lorastudio train ({method}) failed:\n{proc.stderr[-3000:]}")
        return {**step_figures(proc.stdout, warmup, steps, f"lorastudio train ({method})"), "cpu_share": share}
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)


def dreambooth_vs_lora(res: int, steps: int, warmup: int) -> None:
    """DreamBooth's s/step and peak RSS beside the LoRA run's, measured one after the other."""
    results = {method: run_method(method, res, steps, warmup) for method in ("lora", "dreambooth")}
    print(f"\nlorastudio train, SD1.5 size, {res} px, batch 1, fp32; median of {steps} steps after {warmup} warm-up")
    for method, r in results.items():
        print(f"{method:11} {r['s_per_step']:8.2f} s/step ({r['cpu_s_per_step']:6.2f} CPU s)  peak RSS {r['peak_rss_gb']:6.2f} GB"
              f"  (CPU share {100 * r['cpu_share']:.0f}%)")
    lora, db = results["lora"], results["dreambooth"]
    print(f"dreambooth / lora: {db['s_per_step'] / lora['s_per_step']:.2f}x the step time "
          f"({db['cpu_s_per_step'] / lora['cpu_s_per_step']:.2f}x CPU time), {db['peak_rss_gb'] / lora['peak_rss_gb']:.2f}x the peak RSS")


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--dreambooth", action="store_true", help="time lorastudio train with method dreambooth beside method lora")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.dreambooth:
        dreambooth_vs_lora(args.res, args.steps, args.warmup)
        return
    results = {kind: run(kind, args.res, args.steps, args.warmup) for kind in ("lorastudio", "reference")}
    ours, ref = results["lorastudio"], results["reference"]
    print(f"\nTI step, SD1.5 size, {args.res} px, batch 1, fp32, {torch.get_num_threads()} threads; median of {args.steps} steps after {args.warmup} warm-up")
    for kind, r in results.items():
        print(f"{kind:11} {r['s_per_step']:8.2f} s/step  optimizer {r['optimizer_mb']:9.3f} MB  base rows bit-identical: {r['base_rows_identical']}")
    print(f"speed: {ref['s_per_step'] / ours['s_per_step']:.2f}x faster; optimizer memory: {ref['optimizer_mb'] / ours['optimizer_mb']:.0f}x smaller")


if __name__ == "__main__":
    main()
