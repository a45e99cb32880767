"""Overhead of `lorastudio generate` over a bare diffusers call, and the cost of switching LoRAs.

Builds the tiny SD1.5 model and two random LoRAs in a temp dir, loads the pipeline once
through `lorastudio.evaluation.loading` (as the CLI does), then alternates:
  ours: `lorastudio.cli.generate.render` (the CLI's render loop: seeded generator per
        request, the pipeline call, PNG with metadata written under a fresh name);
  bare: `pipe(...)` with the same prompt, size, steps, guidance and seed.
Both use the same pipeline object with the same LoRA active, so the difference is our code.
Switching: `set_scales` between two loaded LoRAs, and load + activate + delete of a LoRA file.

    python benchmarks/generate_overhead.py [--reps 9] [--size 128] [--steps 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_lora(model_dir: Path, out: Path, seed: int) -> Path:
    """A random, visible UNet + text-encoder LoRA exported in kohya format."""
    import torch
    from diffusers import StableDiffusionPipeline

    from lorastudio.models import lora

    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    torch.manual_seed(seed)
    lora.attach_lora(pipe.unet, rank=4, alpha=4.0, init_lora_weights=False, target_modules=lora.unet_target_modules(pipe.unet, "attn"))
    lora.attach_lora(pipe.text_encoder, rank=2, alpha=2.0, init_lora_weights=False,
                     target_modules=lora.text_encoder_target_modules(pipe.text_encoder, "attn"))
    return lora.export_adapter(out, family="sd15", unet=pipe.unet, text_encoders=[pipe.text_encoder], rank=4, alpha=4.0)["kohya"]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    """Print median wall times and the ratios."""
    import torch

    from lorastudio.cli.generate import render
    from lorastudio.evaluation.generation import GenerationRequest
    from lorastudio.evaluation.loading import LoraSpec, apply_loras, load_pipeline, lora_specs, set_scales
    from lorastudio.models.tiny import build_tiny_pipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_pipeline("sd15", root / "model", seed=0)
        files = [make_lora(model, root / name, seed) for name, seed in (("a", 1), ("b", 2))]
        specs = lora_specs([f"{files[0]}:0.8"])
        pipe = load_pipeline(str(model), family="auto", device="cpu")
        apply_loras(pipe, specs)
        req = GenerationRequest("ohwx_kfood_style, a photo of bibimbap", "", 7, args.size, args.size, args.steps, 7.0)

        def ours() -> None:
            render(pipe, [req], root / "out", extra={"base_model": str(model)}, device="cpu", show=False)

        def bare() -> None:
            pipe(prompt=req.prompt, width=req.width, height=req.height, num_inference_steps=req.steps,
                 guidance_scale=req.cfg, generator=torch.Generator("cpu").manual_seed(req.seed), output_type="pil")

        ours(), bare()  # warm-up: first calls allocate
        ours_t, bare_t = [], []
        for _ in range(args.reps):  # interleaved, so machine load drifts affect both alike
            ours_t.append(timed(ours))
            bare_t.append(timed(bare))
        med_ours, med_bare = statistics.median(ours_t), statistics.median(bare_t)

        pipe.load_lora_weights(str(files[1]), adapter_name="other")
        other = LoraSpec(files[1], 0.8, "other")
        switch = [timed(lambda s=s: set_scales(pipe, [s])) for _ in range(args.reps) for s in (other, specs[0])]

        def reload() -> None:
            pipe.load_lora_weights(str(files[1]), adapter_name="fresh")
            set_scales(pipe, [LoraSpec(files[1], 0.8, "fresh")])
            pipe.delete_adapters("fresh")

        reload_t = [timed(reload) for _ in range(args.reps)]

    print(f"tiny sd15, {args.size}x{args.size}, {args.steps} steps, cfg 7, 1 LoRA active, {args.threads} thread(s), median of {args.reps}")
    print(f"bare diffusers pipe(...)            {med_bare * 1000:8.1f} ms")
    print(f"lorastudio generate (render + PNG)  {med_ours * 1000:8.1f} ms")
    pairs = statistics.median(o / b for o, b in zip(ours_t, bare_t, strict=True))
    print(f"overhead ratio ours / bare          {med_ours / med_bare:8.3f}  (target <= 1.05)")
    print(f"median of per-pair ratios           {pairs:8.3f}")
    print(f"switch LoRA (set_adapters, loaded)  {statistics.median(switch) * 1000:8.2f} ms")
    print(f"switch LoRA (load file + delete)    {statistics.median(reload_t) * 1000:8.1f} ms")
    print(f"switch (loaded) / one generation    {statistics.median(switch) / med_bare:8.4f}")


if __name__ == "__main__":
    main()
