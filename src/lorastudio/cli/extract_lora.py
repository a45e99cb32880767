"""`lorastudio extract-lora BASE TUNED --rank r`: a kohya LoRA from a fine-tuned model."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(name="extract-lora")
@click.argument("base")
@click.argument("tuned")
@click.option("--rank", type=click.IntRange(min=1), required=True, help="Rank of the extracted LoRA (per layer; alpha = rank).")
@click.option("--conv-rank", type=click.IntRange(min=1), default=None, help="Rank for 3x3 convolutions (default: --rank).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Output file (default: TUNED-lora-r{rank}.safetensors).")
@click.option("--family", type=click.Choice(["auto", "sd15", "sd2", "sdxl"]), default="auto", show_default=True)
@click.option("--min-diff", type=float, default=1e-6, show_default=True, help="Layers (and text encoders) changed by less than this are skipped.")
@click.option("--clamp-quantile", type=click.FloatRange(0, 1, min_open=True), default=None, help="Clamp factors to this quantile (kohya uses 0.99); off by default.")
def command(base: str, tuned: str, rank: int, conv_rank: int | None, out: Path | None, family: str, min_diff: float,
            clamp_quantile: float | None) -> None:
    """Extract the low-rank part of TUNED - BASE (diffusers folders or single files) as a kohya LoRA.

    \b
    Example:
      lorastudio extract-lora runwayml/sd15-folder run/final/model --rank 32
    The file loads in A1111, ComfyUI and diffusers; the relative error of the reconstruction
    is printed, and an unchanged text encoder is skipped (the usual DreamBooth case).
    """
    from lorastudio.evaluation.loading import LoadError, load_pipeline, resolve_family
    from lorastudio.models.extract import extract
    from lorastudio.models.kohya_keys import UNetLayout, build_metadata
    from lorastudio.models.lora import write_kohya

    try:
        kind = resolve_family(tuned if family == "auto" else base, family)
        base_pipe = load_pipeline(base, family=family, progress=False)
        tuned_pipe = load_pipeline(tuned, family=family, progress=False)
    except LoadError as exc:
        raise click.ClickException(str(exc)) from None
    name = family if family != "auto" else ("sdxl" if kind == "sdxl" else "sd15")
    pairs = {c: (getattr(base_pipe, c), getattr(tuned_pipe, c)) for c in ("unet", "text_encoder", "text_encoder_2")
             if getattr(base_pipe, c, None) is not None}
    result = extract(pairs, rank=rank, conv_rank=conv_rank, min_diff=min_diff, clamp_quantile=clamp_quantile)
    if not result.modules:
        raise click.ClickException(f"{tuned} does not differ from {base} by more than --min-diff {min_diff}; nothing to extract")
    for component in result.unchanged_components:
        click.echo(f"{component}: unchanged, skipped", err=True)
    out = out or Path(f"{Path(tuned).with_suffix('')}-lora-r{rank}.safetensors")
    layout = UNetLayout.from_unet_config(tuned_pipe.unet.config) if name == "sdxl" else None
    metadata = build_metadata(name, rank, float(rank), result.modules, {"lorastudio.extracted_from": str(tuned), "lorastudio.base_model": str(base)})
    write_kohya(out, result.modules, name, metadata, layout)
    click.echo(f"{out}: {len(result.modules)} modules, rank {rank}, max relative error {result.max_relative_error:.2e}")
