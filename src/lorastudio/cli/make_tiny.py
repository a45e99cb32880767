"""`lorastudio make-tiny`: build a random-weight model folder for tests, demos and benchmarks."""

from __future__ import annotations

import sys
from pathlib import Path

import click

FAMILY_CHOICES = ("sd15", "sd2", "sdxl", "flux")
SIZE_CHOICES = ("tiny", "full")


@click.command(
    "make-tiny",
    help="""Build a seeded random-weight Stable Diffusion model in diffusers folder layout.

\b
Nothing is downloaded: the components are real diffusers/transformers classes
(UNet2DConditionModel, AutoencoderKL, CLIPTextModel[WithProjection]) with random weights
and a shipped CLIP-style tokenizer. The folder loads with
StableDiffusionPipeline.from_pretrained (sd15, sd2) or StableDiffusionXLPipeline
(sdxl) and works wherever lorastudio accepts a base model.

\b
  --size tiny   diffusers-test sizes (a few MB, builds in about a second): for tests
                and for trying the whole workflow on a laptop.
  --size full   the real SD1.5 dimensions (about 1.07 B parameters, 4.1 GB on disk,
                about 5 GB of RAM while building): for speed and memory benchmarks.
                Only for --family sd15. The outputs are noise; it is not a trained model.

\b
Examples:
  lorastudio make-tiny models/tiny-sd15 --family sd15
  lorastudio make-tiny models/tiny-sdxl --family sdxl --seed 3
  lorastudio make-tiny models/sd15-size --family sd15 --size full
  lorastudio make-tiny models/tiny-flux --family flux --variant dev
  lorastudio make-tiny models/tiny-schnell --family flux --variant schnell

--family flux builds a tiny FLUX.1 pipeline (FluxTransformer2DModel, CLIP + T5 text
encoders with offline tokenizers, 16-channel VAE) that loads with FluxPipeline.

OUT_DIR must not exist yet (or be empty); nothing is ever overwritten.""",
)
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--family", type=click.Choice(FAMILY_CHOICES), required=True,
              help="Architecture: sd15 (epsilon), sd2 (v-prediction, linear projection), sdxl (two text encoders), flux (FLUX.1).")
@click.option("--variant", type=click.Choice(("dev", "schnell")), default="dev", show_default=True,
              help="FLUX.1 variant for --family flux: dev (guidance embedding, dynamic shift) or schnell.")
@click.option("--size", type=click.Choice(SIZE_CHOICES), default="tiny", show_default=True,
              help="tiny = test sizes; full = real SD1.5 dimensions with random weights (sd15 only).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for the random weights; the same seed gives identical weights.")
def command(out_dir: Path, family: str, variant: str, size: str, seed: int) -> None:
    """Build the model folder and print where it is and what it holds."""
    from tqdm import tqdm

    from lorastudio.models.tiny import build_tiny_pipeline, stage_names

    if family == "flux":
        _make_flux(out_dir, variant, size, seed)
        return
    if size == "full" and family != "sd15":
        raise click.BadParameter("--size full is only available for --family sd15", param_hint="--size")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise click.ClickException(f"{out_dir} already exists and is not empty; choose a new OUT_DIR")
    if size == "full":
        click.echo("building real SD1.5 dimensions: needs about 5 GB of RAM and writes 4.1 GB", err=True)
    stages = stage_names(family)
    with tqdm(total=len(stages), desc=f"make-tiny {family}/{size}", unit="step", file=sys.stderr) as bar:
        def advance(name: str) -> None:
            bar.set_postfix_str(name)
            bar.update(1)

        path = build_tiny_pipeline(family, out_dir, seed=seed, size=size, on_stage=advance)
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    click.echo(f"wrote {family} ({size}, seed {seed}) to {path}  [{total / 1e6:.1f} MB]")


def _make_flux(out_dir: Path, variant: str, size: str, seed: int) -> None:
    from tqdm import tqdm

    from lorastudio.models.tiny_flux import STAGES, build_tiny_flux

    if size != "tiny":
        raise click.BadParameter("--family flux is built at --size tiny only", param_hint="--size")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise click.ClickException(f"{out_dir} already exists and is not empty; choose a new OUT_DIR")
    with tqdm(total=len(STAGES), desc=f"make-tiny flux-{variant}", unit="step", file=sys.stderr) as bar:
        path = build_tiny_flux(out_dir, variant=variant, seed=seed, on_stage=lambda name: bar.update(1))
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    click.echo(f"wrote flux {variant} (tiny, seed {seed}) to {path}  [{total / 1e6:.1f} MB]")
