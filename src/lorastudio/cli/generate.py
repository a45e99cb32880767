"""`lorastudio generate`: text-to-image with any number of LoRAs, each at its own scale."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

DEFAULT_SIZE = {"sd": (512, 512), "sdxl": (1024, 1024), "flux": (1024, 1024)}


def parse_size(text: str | None) -> tuple[int, int] | None:
    """`WxH` -> (W, H), both positive multiples of 8 (what the VAE needs)."""
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not WIDTHxHEIGHT (e.g. 512x768)", param_hint="--size") from None
    if w <= 0 or h <= 0 or w % 8 or h % 8:
        raise click.BadParameter(f"{w}x{h}: width and height must be positive multiples of 8", param_hint="--size")
    return w, h


def render(pipe: Any, requests: list, out_dir: Path, *, extra: dict[str, Any], device: str, show: bool = True) -> list[Path]:
    """Render each request and save it as a PNG with its parameters; returns the written paths."""
    from tqdm import tqdm

    from lorastudio.evaluation.generation import generate, save_png

    written = []
    for i, req in enumerate(tqdm(requests, desc="generate", unit="img", disable=not show)):
        image = generate(pipe, [req], device=device)[0]
        written.append(save_png(image, out_dir / f"{i:03d}-seed{req.seed}.png", req, extra=extra))
    return written


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, help="Base model: a diffusers folder, a hub id, or a single-file .safetensors checkpoint.")
@click.option("--lora", "loras", multiple=True, metavar="FILE[:SCALE]",
              help="A LoRA and its scale (default 1.0). Repeat for several. Kohya or diffusers .safetensors, or a checkpoint folder.")
@click.option("--prompt", required=True, help="What to draw. Include the LoRA's trigger word.")
@click.option("--negative", default="", help="Negative prompt.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the first image; image k uses seed+k.")
@click.option("--steps", default=25, show_default=True, type=click.IntRange(min=1), help="Denoising steps.")
@click.option("--cfg", default=7.0, show_default=True, type=click.FloatRange(min=0), help="Classifier-free guidance scale.")
@click.option("--size", default=None, metavar="WxH", help="Image size (default 512x512 for SD1.5/2, 1024x1024 for SDXL).")
@click.option("--n", "count", default=1, show_default=True, type=click.IntRange(min=1), help="How many images.")
@click.option("--family", default="auto", show_default=True, type=click.Choice(["auto", "sd15", "sd2", "sdxl", "flux"]),
              help="Model family; auto reads the model folder. Required for hub ids.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 ... (auto: cuda when available).")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float16", "bfloat16"]))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder (existing files are never overwritten).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--allow-pickle", is_flag=True,
              help="Accept a .ckpt/.pt single-file base model (a Python pickle: only from a source you trust).")
def command(model: str, loras: tuple[str, ...], prompt: str, negative: str, seed: int, steps: int, cfg: float,
            size: str | None, count: int, family: str, device: str, dtype: str, out_dir: Path, no_progress: bool,
            allow_pickle: bool) -> None:
    """Generate images from a base model with one or more LoRAs.

    \b
    Each --lora becomes its own adapter, so styles mix at their own scales:
      lorastudio generate --model ./sd15 --prompt "ohwx_kfood_style, a bowl of bibimbap" \\
          --lora runs/kfood/final:0.8 --lora other_trainer_style.safetensors:0.4 \\
          --n 4 --size 512x512 --out outputs/
    The generation parameters and LoRAs go into each PNG's metadata ("lorastudio" and
    A1111-style "parameters" text chunks).
    """
    from lorastudio.evaluation.generation import GenerationRequest
    from lorastudio.evaluation.loading import (
        LoadError, apply_loras, check_model_file, describe_loras, load_pipeline, lora_specs, resolve_device, resolve_family,
    )

    try:
        check_model_file(model, allow_pickle)
        specs = lora_specs(list(loras))
        kind = resolve_family(model, family)
        width, height = parse_size(size) or DEFAULT_SIZE[kind]
        device = resolve_device(device)
        pipe = load_pipeline(model, family=family, device=device, dtype=dtype, allow_pickle=allow_pickle,
                             progress=not no_progress)
        apply_loras(pipe, specs)
    except LoadError as exc:
        raise click.ClickException(str(exc)) from None
    requests = [GenerationRequest(prompt, negative, seed + k, width, height, steps, cfg) for k in range(count)]
    extra = {"base_model": model, "loras": describe_loras(specs)}
    written = render(pipe, requests, out_dir, extra=extra, device=device, show=not no_progress)
    for path in written:
        click.echo(str(path))
    print(f"{len(written)} image(s) in {out_dir}", file=sys.stderr)
