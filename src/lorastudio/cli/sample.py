"""`lorastudio sample`: fixed-seed grids of prompts x LoRA scales x checkpoints for a run."""

from __future__ import annotations

from pathlib import Path

import click


def parse_floats(text: str, option: str) -> list[float]:
    """`0,0.5,1` -> [0.0, 0.5, 1.0] (order kept, duplicates dropped)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of numbers", param_hint=option) from None
    if not values:
        raise click.BadParameter("give at least one value", param_hint=option)
    return list(dict.fromkeys(values))


def parse_ints(text: str | None, option: str) -> list[int] | None:
    """`1,2` -> [1, 2]; None stays None."""
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of integers", param_hint=option) from None


def size_override(size: str | None) -> dict[str, int | None]:
    """--size WxH as request fields."""
    from lorastudio.cli.generate import parse_size

    parsed = parse_size(size)
    return {"width": parsed[0], "height": parsed[1]} if parsed else {"width": None, "height": None}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--prompts", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Prompts file: .txt (one per line) or .yaml/.json list. Default: the run's sample.prompts.")
@click.option("--scales", default="0,0.5,0.75,1", show_default=True, help="LoRA scales (columns). 0 is the base model.")
@click.option("--checkpoints", "which", default="all", show_default=True, help="all, last, or steps like 500,1000 (rows).")
@click.option("--seeds", default=None, help="Seeds like 1,2: every prompt once per seed (default: each prompt's own seed).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Denoising steps (default: the run's sample.steps).")
@click.option("--cfg", type=click.FloatRange(min=0), default=None, help="Guidance scale (default: the run's sample.cfg).")
@click.option("--size", default=None, metavar="WxH", help="Image size (default: the run's sample width/height).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default RUN_DIR/grids, or grids-2, -3... when that is taken).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, ... (auto: cuda when available).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def command(run_dir: Path, prompts: Path | None, scales: str, which: str, seeds: str | None, steps: int | None,
            cfg: float | None, size: str | None, out_dir: Path | None, device: str, no_progress: bool) -> None:
    """Render fixed-seed grids for a training run: one grid per prompt and seed,
    rows = checkpoints, columns = LoRA scales.

    \b
    Same seeds everywhere, so differences between cells come from the checkpoint and
    the scale alone. Look for the column where the style shows without the base
    model's subject falling apart, and the row after which nothing improves.
      lorastudio sample runs/kfood --scales 0,0.5,1 --checkpoints all --seeds 1,2
    Writes grid-*.png, cells/ and index.json.
    """
    from lorastudio.evaluation.loading import LoadError
    from lorastudio.evaluation.sample_grid import RunError, sample_run

    overrides = {"steps": steps, "cfg": cfg, **size_override(size)}
    try:
        index, _, _ = sample_run(run_dir, prompts=prompts, scales=parse_floats(scales, "--scales"), which=which,
                                 seeds=parse_ints(seeds, "--seeds"), overrides=overrides, out_dir=out_dir, device=device,
                                 show=not no_progress)
    except (RunError, LoadError) as exc:
        raise click.ClickException(str(exc)) from None
    for grid in index["grids"]:
        click.echo(str(run_dir / grid["file"]))
