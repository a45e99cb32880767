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

On a CPU with bf16 instructions (or pass --fp32-only to skip) the same three run again in bf16:
`lorastudio train` with its default `train.mixed_precision: auto`, the reference as the example
runs with --mixed_precision bf16 (frozen weights cast to bf16, LoRA in fp32), and the bf16 floor.

`--floor` measures the lower bound option by option instead, each in its own process, against
the plain fp32 lower bound of the same run: channels-last, each SDPA kernel, foreach / fused
AdamW, bf16 autocast (on CPUs with avx512_bf16 / AMX, or a GPU), torch.compile of the UNet
(compile time reported; a failure falls back and says why). Options join with "+".

Usage: python benchmarks/train_step.py [--warmup 2] [--steps 3] [--res 512 256]
       python benchmarks/train_step.py --floor [--options plain channels_last ...] [--res 256]
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


def run_lorastudio(res: int, steps: int, warmup: int, precision: str = "auto") -> dict:
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
        "train": {"max_steps": warmup + steps, "batch_size": 1, "lr": 1e-4, "cache": "disk", "cache_dir": str(cache), "max_grad_norm": 1.0,
                  "mixed_precision": precision},
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


FLOOR_OPTIONS = ("plain", "channels_last", "sdpa_math", "sdpa_flash", "sdpa_efficient", "adamw_foreach",
                 "adamw_fused", "bf16", "bf16+channels_last", "compile")


def _sdpa_context(options: set[str]):
    """The SDPA kernel the options name, or whatever SDPA picks (a no-op context)."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = {"sdpa_math": SDPBackend.MATH, "sdpa_flash": SDPBackend.FLASH_ATTENTION,
               "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION}
    chosen = [kernels[o] for o in options if o in kernels]
    return sdpa_kernel(chosen) if chosen else contextlib.nullcontext()


def child(kind: str, res: int, steps: int, warmup: int, option: str = "plain") -> None:
    """Reference, lower-bound or one floor option's loop in this process; prints one JSON line."""
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
    options = set(option.split("+"))
    unknown = options - {o for name in FLOOR_OPTIONS for o in name.split("+")}
    if unknown:
        raise SystemExit(f"unknown --options {sorted(unknown)}; choose from {', '.join(FLOOR_OPTIONS)}")
    adamw = {"foreach": True} if "adamw_foreach" in options else {"fused": True} if "adamw_fused" in options else {"foreach": False}
    opt = torch.optim.AdamW(params, lr=1e-4, **adamw)
    if "channels_last" in options:
        unet.to(memory_format=torch.channels_last)
    autocast_dtype = torch.bfloat16 if "bf16" in options else None
    compile_note, forward = "", unet
    if "compile" in options:
        try:
            forward = torch.compile(unet)
        except Exception as exc:  # noqa: BLE001 - reported, then the eager UNet is timed
            compile_note = f"compile failed ({type(exc).__name__}: {str(exc)[:120]}); eager timed"
    sched = DDPMScheduler.from_pretrained(MODEL, subfolder="scheduler")
    if kind == "reference":
        vae = AutoencoderKL.from_pretrained(MODEL, subfolder="vae").requires_grad_(False)
        te = CLIPTextModel.from_pretrained(MODEL, subfolder="text_encoder").requires_grad_(False)
        tok = CLIPTokenizer.from_pretrained(MODEL, subfolder="tokenizer")
        image_path = ensure_dataset(res) / "images" / "i0.png"
        if "bf16" in options:
            # As the example does with --mixed_precision bf16: frozen weights in bf16, LoRA in fp32.
            vae.to(torch.bfloat16)
            te.to(torch.bfloat16)
            unet.to(torch.bfloat16)
            for param in params:
                param.data = param.data.float()
    else:
        fixed_latents = torch.randn(1, 4, res // 8, res // 8)
        fixed_text = torch.randn(1, 77, 768)
    times, encode_times = [], []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        if kind == "reference":
            pixels = torch.from_numpy(np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
            with torch.no_grad():
                latents = vae.encode(pixels.to(vae.dtype)).latent_dist.sample().float() * vae.config.scaling_factor
                ids = tok([CAPTION], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
                text = te(ids)[0].float()
        else:
            latents, text = fixed_latents, fixed_text
        encode_times.append(time.perf_counter() - start)
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (1,))
        noisy = sched.add_noise(latents, noise, t)
        if "channels_last" in options:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None), _sdpa_context(options):
            try:
                pred = forward(noisy, t, encoder_hidden_states=text).sample
            except Exception as exc:  # noqa: BLE001 - a compile that fails at first call falls back
                if forward is unet:
                    raise
                compile_note = f"compile failed at first call ({type(exc).__name__}: {str(exc)[:120]}); eager timed"
                forward = unet
                pred = forward(noisy, t, encoder_hidden_states=text).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    # The encode share, timed inside the same steps, gives a speed-up estimate that does not
    # depend on how busy the machine was while the other runs were measured.
    encode_share = statistics.median(e / t for e, t in zip(encode_times[warmup:], times[warmup:], strict=True))
    print(json.dumps({"s_per_step": statistics.median(times[warmup:]), "peak_rss_gb": peak_rss_gb(), "encode_share": encode_share,
                      "first_step_s": times[0], "note": compile_note}))


def run_child(kind: str, res: int, steps: int, warmup: int, option: str = "plain", fatal: bool = True) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--res", str(res), "--steps", str(steps), "--warmup", str(warmup), "--options", option]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        if fatal:
            raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
        return {"error": proc.stderr.strip().splitlines()[-1][:160] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bf16_cpu() -> bool:
    """Whether this CPU has bf16 instructions (avx512_bf16 or AMX)."""
    from lorastudio.environment import cpu_bf16_flags

    return bool(cpu_bf16_flags())


def run_floor(res_list: list[int], options: list[str], steps: int, warmup: int) -> None:
    """Each option's lower-bound step against the plain fp32 lower bound, one process each."""
    import torch

    print(f"floor: {warmup} warm-up + {steps} timed steps (median) per option; torch {torch.__version__}; "
          f"threads {torch.get_num_threads()}; bf16 instructions: {'yes' if bf16_cpu() else 'no'}", flush=True)
    for res in res_list:
        base = run_child("lower_bound", res, steps, warmup, "plain")
        print(f"\n{res} px, batch 1, rank 4, attn targets, UNet forward/backward + AdamW (the lower bound)")
        print(f"  {'option':<22} {'s/step':>8} {'vs plain':>9} {'first step s':>13}  note")
        print(f"  {'plain (fp32)':<22} {base['s_per_step']:8.2f} {'1.00x':>9} {base['first_step_s']:13.1f}", flush=True)
        for option in options:
            if option == "plain":
                continue
            got = run_child("lower_bound", res, steps, warmup, option, fatal=False)
            if "error" in got:
                print(f"  {option:<22} {'-':>8} {'-':>9} {'-':>13}  failed: {got['error']}", flush=True)
                continue
            ratio = base["s_per_step"] / got["s_per_step"]
            note = got["note"] or ("bf16 autocast without bf16 instructions" if "bf16" in option and not bf16_cpu() else "")
            print(f"  {option:<22} {got['s_per_step']:8.2f} {ratio:8.2f}x {got['first_step_s']:13.1f}  {note}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--child", choices=["reference", "lower_bound"])
    parser.add_argument("--floor", action="store_true", help="measure the lower bound option by option")
    parser.add_argument("--fp32-only", action="store_true", help="skip the bf16 rows")
    parser.add_argument("--options", nargs="+", help=f"floor options (default: all of {', '.join(FLOOR_OPTIONS)})")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        child(args.child, args.res[0], args.steps, args.warmup, "+".join(args.options or ["plain"]))
        return
    ensure_model()
    if args.floor:
        run_floor(args.res, args.options or list(FLOOR_OPTIONS), args.steps, args.warmup)
        return
    print(f"torch threads: {os.environ.get('OMP_NUM_THREADS', 'default')}; {args.warmup} warm-up + {args.steps} timed steps (median)", flush=True)
    for res in args.res:
        ours = run_lorastudio(res, args.steps, args.warmup, "no")
        ref = run_child("reference", res, args.steps, args.warmup)
        low = run_child("lower_bound", res, args.steps, args.warmup)
        if bf16_cpu() and not args.fp32_only:
            ours16 = run_lorastudio(res, args.steps, args.warmup, "auto")
            ref16 = run_child("reference", res, args.steps, args.warmup, "bf16")
            low16 = run_child("lower_bound", res, args.steps, args.warmup, "bf16")
            print(f"\n{res} px, batch 1, rank 4, attn targets, bf16 CPU (the default here: train.mixed_precision auto)")
            print(f"  lorastudio train : {ours16['s_per_step']:7.2f} s/step  peak RSS {ours16['peak_rss_gb']:.2f} GB")
            print(f"  reference loop   : {ref16['s_per_step']:7.2f} s/step  (the example's bf16: frozen weights in bf16)")
            print(f"  new floor (bf16) : {low16['s_per_step']:7.2f} s/step  vs old fp32 floor {low['s_per_step']:.2f}: "
                  f"{low['s_per_step'] / low16['s_per_step']:.2f}x")
            print(f"  default vs fp32 reference: {ref['s_per_step'] / ours16['s_per_step']:.2f}x; "
                  f"vs bf16 reference: {ref16['s_per_step'] / ours16['s_per_step']:.2f}x; "
                  f"over the bf16 floor: {100 * (ours16['s_per_step'] / low16['s_per_step'] - 1):+.1f}%", flush=True)
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
