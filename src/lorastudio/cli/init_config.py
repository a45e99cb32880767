"""`lorastudio init-config`: print a fully commented training config."""

from __future__ import annotations

import click


@click.command(name="init-config")
@click.option("--family", type=click.Choice(["sd15", "sd2", "sdxl", "flux"]), default="sd15", show_default=True, help="Model family the defaults are tuned for.")
@click.option("--variant", type=click.Choice(["dev", "schnell"]), default="dev", show_default=True,
              help="FLUX.1 variant with --family flux (schnell: samples at 4 steps, guidance 0).")
@click.option("--dataset", "datasets", multiple=True, help="Dataset dir(s) to put in data.datasets (repeatable).")
def command(family: str, variant: str, datasets: tuple[str, ...]) -> None:
    """Print a training config with every key, its default and what it does.

    \b
    Save it, edit it, then train:
      lorastudio init-config --family sdxl --dataset ds/ > cfg.yaml
      lorastudio train cfg.yaml train.max_steps=2000
    """
    from lorastudio.config.loader import commented_yaml, deep_merge
    from lorastudio.config.train import FAMILY_DEFAULTS, TrainConfig

    from lorastudio.config.flux import SCHNELL_DEFAULTS

    defaults = deep_merge(FAMILY_DEFAULTS[family], SCHNELL_DEFAULTS) if family == "flux" and variant == "schnell" else FAMILY_DEFAULTS[family]
    data = deep_merge(defaults, {"data": {"datasets": list(datasets)}} if datasets else {})
    cfg = TrainConfig.model_validate(data)
    header = f"# lorastudio training config ({family}). Every key is shown with its default.\n# Override any key on the command line: lorastudio train cfg.yaml train.lr=5e-5\n"
    click.echo(header + commented_yaml(cfg))
