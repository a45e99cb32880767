"""`lorastudio report`: (re)write a run's self-contained HTML report."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def command(run_dir: Path) -> None:
    """Write RUN_DIR/report.html from the run's own files.

    \b
    Shows the answer first (which file to use, at which scale, and why; needs
    `lorastudio evaluate`), then loss / learning-rate curves, the scores table, sample
    grids, training samples, the dataset audit and the resolved config. Opens offline:
    no scripts, charts are inline SVG, images are files inside the run dir.
    """
    from lorastudio.evaluation.report import write_report

    if not (run_dir / "config.resolved.yaml").is_file():
        raise click.ClickException(f"{run_dir}: no config.resolved.yaml; is this a `lorastudio train` output dir?")
    click.echo(str(write_report(run_dir)))
