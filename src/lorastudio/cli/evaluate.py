"""`lorastudio evaluate`: score every checkpoint at several scales, recommend one, write the report."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--clip-model", default=None, metavar="ID_OR_PATH",
              help="CLIP model for prompt adherence and image similarity (e.g. openai/clip-vit-base-patch32 or a folder). "
                   "Without it, similarity uses a 16x16 pixel proxy and adherence is skipped.")
@click.option("--prompts", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Held-out prompts (.txt one per line, or .yaml list). They should not name the dataset's confounders "
                   "(e.g. 'black background'), so a leak shows. Default: the run's sample.prompts.")
@click.option("--scales", default="0.5,0.75,1", show_default=True, help="LoRA scales to score (the base model, scale 0, is always added).")
@click.option("--checkpoints", "which", default="all", show_default=True, help="all, last, or steps like 500,1000.")
@click.option("--seeds", default=None, help="Seeds like 1,2,3: more seeds, steadier figures.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Denoising steps (default: the run's sample.steps).")
@click.option("--size", default=None, metavar="WxH", help="Image size (default: the run's sample width/height).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, ... (auto: cuda when available).")
@click.option("--no-report", is_flag=True, help="Skip writing report.html.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def command(run_dir: Path, clip_model: str | None, prompts: Path | None, scales: str, which: str, seeds: str | None,
            steps: int | None, size: str | None, device: str, no_report: bool, no_progress: bool) -> None:
    """Measure what a LoRA learned and say which file to use.

    \b
    Per checkpoint and scale, on fixed seeds:
      - closeness to the training images (CLIP image embeddings, or a pixel proxy),
      - prompt adherence (CLIP score; needs --clip-model),
      - contamination leak: how much more often the dataset's confounders (a background
        in most training images, or what `lorastudio audit` flagged) show up in LoRA
        outputs than in the base model's, on prompts that do not ask for them.
    Ends with a recommended checkpoint and scale, and why. Writes RUN_DIR/evaluation.json,
    grids (as `lorastudio sample`) and RUN_DIR/report.html.
      lorastudio evaluate runs/kfood --seeds 1,2,3 --clip-model openai/clip-vit-base-patch32
    """
    from lorastudio.captions.backends import BackendError
    from lorastudio.cli.sample import parse_floats, parse_ints, size_override
    from lorastudio.evaluation.evaluate import evaluate_run
    from lorastudio.evaluation.loading import LoadError
    from lorastudio.evaluation.sample_grid import RunError

    try:
        result = evaluate_run(run_dir, clip_model=clip_model, prompts=prompts, scales=parse_floats(scales, "--scales"), which=which,
                              seeds=parse_ints(seeds, "--seeds"), overrides={"steps": steps, **size_override(size)},
                              device=device, show=not no_progress)
    except (RunError, LoadError, BackendError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{'checkpoint':12s} {'scale':>5s} {'closeness':>9s} {'gain':>7s} {'max leak':>8s} {'clip':>6s} {'score':>7s}")
    for row in result["rows"]:
        clip = f"{row['adherence']:6.1f}" if row["adherence"] is not None else "     -"
        click.echo(f"{row['checkpoint']:12s} {row['scale']:5g} {row['closeness']:9.3f} {row['closeness_gain']:+7.3f} "
                   f"{row['max_leak']:8.0%} {clip} {row['score']:+7.3f}")
    rec = result["recommendation"]
    click.echo(f"\nrecommended: {run_dir / rec['file']} at scale {rec['scale']:g}\n{rec['reason']}")
    click.echo(f"wrote {run_dir / 'evaluation.json'}")
    if not no_report:
        from lorastudio.evaluation.report import write_report

        click.echo(f"wrote {write_report(run_dir)}")
