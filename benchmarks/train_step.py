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

`--example PATH` also runs the real, unmodified diffusers
examples/text_to_image/train_text_to_image_lora.py at PATH on the same model, images, caption
and settings (batch 1, rank 4, lr 1e-4 constant, grad clip 1.0; `--mixed_precision no`, and
`bf16` beside the bf16 rows) in its own venv (`--example-python`, default .venv-example; build
it with benchmarks/example_setup.sh). Its step times come from benchmarks/example_timer.py,
which clocks the example's "Steps" progress bar without touching the script. `--repeat N`
measures lorastudio and the example N times, alternating, and prints the ratio's spread;
`--no-loop` skips the reference loop and lower bound rows. Every row also gives CPU seconds
per step and each run's share of the cores: on a shared machine, wall-time ratios from runs with
a low share are not speed figures.

`--unet sdxl` (with --floor) times an SDXL-shaped UNet instead: SDXL's widths (320/640/1280),
heads, 2048-wide cross-attention and text-time conditioning, random weights, but transformer
depth (1, 2, 2) instead of (1, 2, 10) (0.90 B parameters instead of 2.57 B) so a step fits this
machine; `--sdxl-depth 10` asks for the full depth.

Usage: python benchmarks/train_step.py [--warmup 2] [--steps 3] [--res 512 256]
       python benchmarks/train_step.py --example .venv-example/examples/train_text_to_image_lora.py --res 512 --repeat 3
       python benchmarks/train_step.py --floor [--options plain channels_last ...] [--res 256]
       python benchmarks/train_step.py --floor --unet sdxl --options plain bf16 --res 512
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
REPO = Path(__file__).resolve().parent.parent
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


def run_measured(cmd: list[str], **kwargs) -> tuple[subprocess.CompletedProcess, float]:
    """Run `cmd`; also return the share of the machine's cores it got (its CPU time over wall
    time x cores). Well under 100% means other work ran beside it and slowed it."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - start
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return proc, cpu / (wall * (os.cpu_count() or 1))


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
    timer = str(Path(__file__).with_name("example_timer.py"))
    proc, share = run_measured([sys.executable, timer, "--lorastudio", "train", str(cfg_path), "--no-progress", "--skip-audit"])
    if proc.returncode != 0:
        raise SystemExit(f"lorastudio train failed:\n{proc.stderr[-3000:]}")
    cache_s = float(re.search(r"caches ready in ([\d.]+)s", proc.stderr).group(1))
    return {**step_figures(proc.stdout, warmup, steps, "lorastudio train"), "cache_s": cache_s, "cpu_share": share}


def step_figures(stdout: str, warmup: int, steps: int, who: str) -> dict:
    """Medians of the timed steps from example_timer.py's JSON line."""
    lines = [line for line in stdout.splitlines() if line.startswith('{"step_s"')]
    got = json.loads(lines[-1]) if lines else {"step_s": []}
    if len(got["step_s"]) != warmup + steps:
        raise SystemExit(f"{who} logged {len(got['step_s'])} steps, expected {warmup + steps}")
    return {"s_per_step": statistics.median(got["step_s"][warmup:]), "cpu_s_per_step": statistics.median(got["step_cpu_s"][warmup:]),
            "peak_rss_gb": got["peak_rss_gb"]}


def ensure_example_dataset(res: int) -> Path:
    """The same 4 images and caption as an imagefolder (metadata.jsonl) for the example."""
    import shutil

    src, root = ensure_dataset(res), ROOT / f"exds{res}"
    if not (root / "metadata.jsonl").is_file():
        root.mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in (src / "images").glob("*.png"))
        for name in names:
            shutil.copyfile(src / "images" / name, root / name)
        (root / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "text": CAPTION}) + "\n" for n in names))
    return root


def run_example(script: Path, python: Path, res: int, steps: int, warmup: int, precision: str = "no") -> dict:
    """The unmodified diffusers example in its own venv, its steps clocked by example_timer.py."""
    import shutil

    out = ROOT / f"example-out{res}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(python), str(Path(__file__).with_name("example_timer.py")), str(script),
           "--pretrained_model_name_or_path", str(MODEL), "--train_data_dir", str(ensure_example_dataset(res)),
           "--resolution", str(res), "--train_batch_size", "1", "--max_train_steps", str(warmup + steps),
           "--learning_rate", "1e-4", "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--rank", "4",
           "--max_grad_norm", "1.0", "--mixed_precision", precision, "--seed", "0", "--output_dir", str(out),
           "--checkpointing_steps", "1000000", "--dataloader_num_workers", "0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(ROOT / "datasets-cache")}
    proc, share = run_measured(cmd, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"the diffusers example failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {**step_figures(proc.stdout, warmup, steps, "the diffusers example"), "cpu_share": share}


def sdxl_unet(depth: int):
    """An SDXL-shaped UNet with random weights (seeded by the caller); `depth` = transformer
    layers in the 1280-wide blocks (SDXL: 10)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64, act_fn="silu", addition_embed_type="text_time", addition_time_embed_dim=256,
        attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], layers_per_block=2,
        projection_class_embeddings_input_dim=2816, transformer_layers_per_block=[1, 2, depth], use_linear_projection=True,
    ).requires_grad_(False)


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


def child(kind: str, res: int, steps: int, warmup: int, option: str = "plain", unet_kind: str = "sd15") -> None:
    """Reference, lower-bound or one floor option's loop in this process; prints one JSON line.
    `unet_kind` "sdxl" or "sdxl<depth>" times an SDXL-shaped UNet (lower bound only)."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer

    from lorastudio.models.lora import attach_lora, unet_target_modules

    torch.manual_seed(0)
    if unet_kind.startswith("sdxl"):
        unet = sdxl_unet(int(unet_kind[4:] or 2))
    else:
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
        fixed_text = torch.randn(1, 77, unet.config.cross_attention_dim)
    added = None
    if unet.config.addition_embed_type == "text_time":  # SDXL: pooled text and six size/crop numbers
        added = {"text_embeds": torch.randn(1, 1280), "time_ids": torch.tensor([[res, res, 0, 0, res, res]], dtype=torch.float32)}
    times, encode_times, cpu_times = [], [], []
    for _ in range(warmup + steps):
        start, cpu_start = time.perf_counter(), time.process_time()
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
                pred = forward(noisy, t, encoder_hidden_states=text, added_cond_kwargs=added).sample
            except Exception as exc:  # noqa: BLE001 - a compile that fails at first call falls back
                if forward is unet:
                    raise
                compile_note = f"compile failed at first call ({type(exc).__name__}: {str(exc)[:120]}); eager timed"
                forward = unet
                pred = forward(noisy, t, encoder_hidden_states=text, added_cond_kwargs=added).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    # The encode share, timed inside the same steps, gives a speed-up estimate that does not
    # depend on how busy the machine was while the other runs were measured.
    encode_share = statistics.median(e / t for e, t in zip(encode_times[warmup:], times[warmup:], strict=True))
    print(json.dumps({"s_per_step": statistics.median(times[warmup:]), "cpu_s_per_step": statistics.median(cpu_times[warmup:]),
                      "peak_rss_gb": peak_rss_gb(), "encode_share": encode_share,
                      "first_step_s": times[0], "note": compile_note}))


def run_child(kind: str, res: int, steps: int, warmup: int, option: str = "plain", fatal: bool = True, unet: str = "sd15") -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--res", str(res), "--steps", str(steps), "--warmup", str(warmup),
           "--options", option, "--unet", unet]
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


def run_floor(res_list: list[int], options: list[str], steps: int, warmup: int, unet: str = "sd15") -> None:
    """Each option's lower-bound step against the plain fp32 lower bound, one process each."""
    import torch

    print(f"floor: {warmup} warm-up + {steps} timed steps (median) per option; torch {torch.__version__}; "
          f"threads {torch.get_num_threads()}; bf16 instructions: {'yes' if bf16_cpu() else 'no'}", flush=True)
    for res in res_list:
        base = run_child("lower_bound", res, steps, warmup, "plain", unet=unet)
        what = "SD1.5-size UNet" if unet == "sd15" else f"SDXL-shaped UNet, transformer depth (1, 2, {unet[4:] or 2})"
        print(f"\n{res} px, batch 1, rank 4, attn targets, {what} forward/backward + AdamW (the lower bound)")
        print(f"  {'option':<22} {'s/step':>8} {'vs plain':>9} {'CPU s':>7} {'vs plain':>9} {'first step s':>13}  note")
        print(f"  {'plain (fp32)':<22} {base['s_per_step']:8.2f} {'1.00x':>9} {base['cpu_s_per_step']:7.2f} {'1.00x':>9} "
              f"{base['first_step_s']:13.1f}", flush=True)
        for option in options:
            if option == "plain":
                continue
            got = run_child("lower_bound", res, steps, warmup, option, fatal=False, unet=unet)
            if "error" in got:
                print(f"  {option:<22} {'-':>8} {'-':>9} {'-':>7} {'-':>9} {'-':>13}  failed: {got['error']}", flush=True)
                continue
            ratio = base["s_per_step"] / got["s_per_step"]
            note = got["note"] or ("bf16 autocast without bf16 instructions" if "bf16" in option and not bf16_cpu() else "")
            cpu_ratio = base["cpu_s_per_step"] / got["cpu_s_per_step"]
            print(f"  {option:<22} {got['s_per_step']:8.2f} {ratio:8.2f}x {got['cpu_s_per_step']:7.2f} {cpu_ratio:8.2f}x "
                  f"{got['first_step_s']:13.1f}  {note}", flush=True)


FP32_FLOOR: dict[int, dict] = {}  # res -> the fp32 lower bound of this run, quoted beside the bf16 one


def compare(args: argparse.Namespace, res: int, precision: str) -> None:
    """lorastudio against the example (repeated, alternating) and the in-process loops, one precision."""
    bf16 = precision == "bf16"
    pairs = []
    for _ in range(args.repeat if args.example else 1):
        ours = run_lorastudio(res, args.steps, args.warmup, "auto" if bf16 else "no")
        ex = run_example(args.example, args.example_python, res, args.steps, args.warmup, precision) if args.example else None
        pairs.append((ours, ex))
    ours = pairs[0][0]
    loop = None if args.no_loop else (run_child("reference", res, args.steps, args.warmup, "bf16" if bf16 else "plain"),
                                      run_child("lower_bound", res, args.steps, args.warmup, "bf16" if bf16 else "plain"))
    label = "bf16 CPU (the default here: train.mixed_precision auto)" if bf16 else "fp32 CPU"
    print(f"\n{res} px, batch 1, rank 4, attn targets, {label}")
    for i, (run, ex) in enumerate(pairs, 1):
        tag = f" (run {i})" if len(pairs) > 1 else ""
        print(f"  lorastudio train{tag:<8}: {run['s_per_step']:7.2f} s/step ({run['cpu_s_per_step']:6.2f} CPU s)  peak RSS "
              f"{run['peak_rss_gb']:.2f} GB  (one-time cache {run['cache_s']:.1f} s; CPU share {100 * run['cpu_share']:.0f}%)")
        if ex:
            print(f"  diffusers example{tag:<7}: {ex['s_per_step']:7.2f} s/step ({ex['cpu_s_per_step']:6.2f} CPU s)  peak RSS "
                  f"{ex['peak_rss_gb']:.2f} GB  (CPU share {100 * ex['cpu_share']:.0f}%) -> {ex['s_per_step'] / run['s_per_step']:.2f}x, "
                  f"CPU time {ex['cpu_s_per_step'] / run['cpu_s_per_step']:.2f}x", flush=True)
    if args.example:
        for what, key in (("wall", "s_per_step"), ("CPU time", "cpu_s_per_step")):
            ratios = [ex[key] / run[key] for run, ex in pairs]
            spread = f" (runs: {', '.join(f'{r:.2f}' for r in ratios)})" if len(ratios) > 1 else ""
            print(f"  speed-up vs the real example ({'bf16' if bf16 else 'fp32'} both), {what}: median "
                  f"{statistics.median(ratios):.2f}x{spread}{'' if bf16 else ' (target >= 1.6x at 512 px)'}")
    if loop:
        ref, low = loop
        print(f"  reference loop   : {ref['s_per_step']:7.2f} s/step ({ref['cpu_s_per_step']:6.2f} CPU s)  peak RSS {ref['peak_rss_gb']:.2f} GB"
              + (f"  (vs the example: {ref['s_per_step'] / pairs[0][1]['s_per_step']:.2f}x its time)" if args.example else ""))
        old = FP32_FLOOR.setdefault(res, low) if not bf16 else FP32_FLOOR.get(res)
        print(f"  lower bound      : {low['s_per_step']:7.2f} s/step ({low['cpu_s_per_step']:6.2f} CPU s)  peak RSS {low['peak_rss_gb']:.2f} GB"
              + (f"  (the fp32 floor {old['s_per_step']:.2f}: {old['s_per_step'] / low['s_per_step']:.2f}x)" if bf16 and old else ""))
        print(f"  vs reference loop: {ref['s_per_step'] / ours['s_per_step']:.2f}x; over the lower bound: "
              f"{100 * (ours['s_per_step'] / low['s_per_step'] - 1):+.1f}% (target <= +10%); "
              f"the reference spends {100 * ref['encode_share']:.0f}% of each step encoding, so removing it is worth "
              f"{1 / (1 - ref['encode_share']):.2f}x at equal machine load", flush=True)
        if args.example:
            # What caching can give at most here: a lorastudio step that cost exactly the UNet
            # forward/backward and AdamW, against the example's median step of the same run.
            example_median = statistics.median(ex["s_per_step"] for _, ex in pairs)
            print(f"  ceiling          : the example's median step / the lower bound = {example_median / low['s_per_step']:.2f}x "
                  f"(the most a step at the floor can show; CPU time "
                  f"{statistics.median(ex['cpu_s_per_step'] for _, ex in pairs) / low['cpu_s_per_step']:.2f}x)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--child", choices=["reference", "lower_bound"])
    parser.add_argument("--floor", action="store_true", help="measure the lower bound option by option")
    parser.add_argument("--unet", default="sd15", help="with --floor: sd15, or sdxl (SDXL-shaped, depth --sdxl-depth)")
    parser.add_argument("--sdxl-depth", type=int, default=2, help="transformer layers in SDXL's 1280-wide blocks (full: 10)")
    parser.add_argument("--fp32-only", action="store_true", help="skip the bf16 rows")
    parser.add_argument("--bf16-only", action="store_true", help="skip the fp32 rows")
    parser.add_argument("--options", nargs="+", help=f"floor options (default: all of {', '.join(FLOOR_OPTIONS)})")
    parser.add_argument("--example", type=Path, help="the diffusers train_text_to_image_lora.py to run beside lorastudio")
    parser.add_argument("--example-python", type=Path, default=REPO / ".venv-example" / "bin" / "python")
    parser.add_argument("--repeat", type=int, default=1, help="with --example: alternating lorastudio/example runs")
    parser.add_argument("--no-loop", action="store_true", help="skip the reference loop and lower bound rows")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        child(args.child, args.res[0], args.steps, args.warmup, "+".join(args.options or ["plain"]), args.unet)
        return
    if args.example:
        args.example, args.example_python = args.example.resolve(), args.example_python.absolute()
    if args.example and not (args.example.is_file() and args.example_python.is_file()):
        raise SystemExit(f"--example needs {args.example} and {args.example_python}; build them with benchmarks/example_setup.sh")
    ensure_model()
    if args.floor:
        unet = "sd15" if args.unet == "sd15" else f"sdxl{args.sdxl_depth}"
        run_floor(args.res, args.options or list(FLOOR_OPTIONS), args.steps, args.warmup, unet)
        return
    print(f"torch threads: {os.environ.get('OMP_NUM_THREADS', 'default')}; {args.warmup} warm-up + {args.steps} timed steps (median)"
          f"; bf16 instructions: {'yes' if bf16_cpu() else 'no'}", flush=True)
    for res in args.res:
        if not args.bf16_only:
            compare(args, res, "no")
        if bf16_cpu() and not args.fp32_only:
            compare(args, res, "bf16")


if __name__ == "__main__":
    main()
