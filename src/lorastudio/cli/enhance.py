"""`lorastudio enhance`: restyle photos with a style LoRA (image-to-image), layout kept."""

from __future__ import annotations

import sys
from pathlib import Path

import click

DEFAULT_RESOLUTION = {"sd": 512, "sdxl": 1024, "flux": 1024}


def _outputs(out_dir: Path, photo: Path, result, before, edges, request, extra: dict) -> list[Path]:
    from lorastudio.evaluation.enhance import side_by_side
    from lorastudio.evaluation.generation import save_png

    written = [save_png(result, out_dir / f"{photo.stem}.png", request, extra=extra),
               save_png(side_by_side(before, result), out_dir / f"{photo.stem}-before-after.png", request, extra=extra)]
    if edges is not None:
        written.append(save_png(edges, out_dir / f"{photo.stem}-edges.png", request, extra=extra))
    return written


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("photos", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", required=True, help="Base model: a diffusers folder, a hub id, or a single-file .safetensors checkpoint.")
@click.option("--lora", "loras", multiple=True, required=True, metavar="STYLE[:SCALE]",
              help="The style LoRA and its scale (default 1.0); repeat to mix several.")
@click.option("--prompt", default="a professional food photo", show_default=True,
              help="What the photo shows; start it with the LoRA's trigger word (e.g. 'ohwx_kfood_style, a bowl of bibimbap').")
@click.option("--negative", default="", help="Negative prompt.")
@click.option("--strength", default=0.45, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True),
              help="How far from the photo to go: 0.3 keeps it close, 0.7 repaints most of it.")
@click.option("--control", default="none", show_default=True, type=click.Choice(["none", "canny"]),
              help="canny: condition on the photo's edges through --controlnet so the dish keeps its layout.")
@click.option("--controlnet", default=None, metavar="ID_OR_PATH", help="Canny ControlNet (e.g. lllyasviel/sd-controlnet-canny or a folder).")
@click.option("--control-scale", default=1.0, show_default=True, type=click.FloatRange(min=0), help="ControlNet conditioning scale.")
@click.option("--steps", default=30, show_default=True, type=click.IntRange(min=1), help="Denoising steps (about steps x strength run).")
@click.option("--cfg", default=6.0, show_default=True, type=click.FloatRange(min=0), help="Guidance scale.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed (the same for every photo).")
@click.option("--resolution", type=click.IntRange(min=8), default=None, help="Working size: about RES x RES pixels, aspect kept (default 512, SDXL 1024).")
@click.option("--family", default="auto", show_default=True, type=click.Choice(["auto", "sd15", "sd2", "sdxl", "flux"]), help="Model family (auto reads the model folder).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, ... (auto: cuda when available).")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float16", "bfloat16"]))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder (nothing there is overwritten).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--allow-pickle", is_flag=True,
              help="Accept a .ckpt/.pt single-file base model (a Python pickle: only from a source you trust).")
def command(photos: tuple[Path, ...], model: str, loras: tuple[str, ...], prompt: str, negative: str, strength: float,
            control: str, controlnet: str | None, control_scale: float, steps: int, cfg: float, seed: int,
            resolution: int | None, family: str, device: str, dtype: str, out_dir: Path, no_progress: bool,
            allow_pickle: bool) -> None:
    """Restyle PHOTO... with a style LoRA, keeping each photo's size and orientation.

    \b
    For each photo writes NAME.png (the result, at the photo's own size and upright as
    its EXIF says), NAME-before-after.png, and with --control canny NAME-edges.png.
    Input files are only read, never changed.
      lorastudio enhance dish.jpg --model ./sd15 --lora runs/kfood/final:0.9 \\
          --prompt "ohwx_kfood_style, a photo of yangnyeom chicken" --strength 0.45 --out enhanced/
      # keep the plating exactly: condition on the photo's edges
      lorastudio enhance dish.jpg ... --control canny --controlnet lllyasviel/sd-controlnet-canny
    """
    from tqdm import tqdm

    from lorastudio.evaluation.enhance import EnhanceSettings, enhance_image, load_photo
    from lorastudio.evaluation.generation import GenerationRequest
    from lorastudio.evaluation.loading import (
        LoadError, apply_loras, check_model_file, describe_loras, load_controlnet, load_pipeline, lora_specs, resolve_device, resolve_family,
    )

    if control == "canny" and not controlnet:
        raise click.UsageError("--control canny needs --controlnet ID_OR_PATH (a canny ControlNet for this base model)")
    try:
        check_model_file(model, allow_pickle)
        specs = lora_specs(list(loras))
        kind = resolve_family(model, family)
        device = resolve_device(device)
        net = load_controlnet(controlnet, dtype) if control == "canny" else None
        pipe = load_pipeline(model, family=family, task="controlnet_img2img" if net is not None else "img2img",
                             device=device, dtype=dtype, controlnet=net, allow_pickle=allow_pickle,
                             progress=not no_progress)
        apply_loras(pipe, specs)
    except LoadError as exc:
        raise click.ClickException(str(exc)) from None
    settings = EnhanceSettings(prompt, negative, strength, steps, cfg, seed, resolution or DEFAULT_RESOLUTION[kind], control, control_scale)
    count = 0
    for photo in tqdm(photos, desc="enhance", unit="photo", disable=no_progress):
        try:
            before = load_photo(photo)
        except (ValueError, OSError) as exc:
            raise click.ClickException(str(exc)) from None
        result, edges = enhance_image(pipe, before, settings, device=device)
        request = GenerationRequest(prompt, negative, seed, before.width, before.height, steps, cfg)
        extra = {"source": str(photo), "strength": strength, "control": control, "controlnet": controlnet,
                 "base_model": model, "loras": describe_loras(specs)}
        for path in _outputs(out_dir, photo, result, before, edges, request, extra):
            click.echo(str(path))
        count += 1
    print(f"{count} photo(s) enhanced into {out_dir}", file=sys.stderr)
