"""`lorastudio inspect`: what a LoRA file holds (format, coverage, rank, alpha, metadata)."""

from __future__ import annotations

import json
from pathlib import Path

import click

_MAX_VALUE = 160  # long metadata values (tag frequencies) are cut in the text view, never in --json


@click.command()
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--family", type=click.Choice(["sd15", "sd2", "sdxl"]), default=None,
              help="Base model family. Default: guessed from key names and ss_* metadata.")
@click.option("--allow-pickle", is_flag=True,
              help="Accept a .ckpt/.pt/.bin file (loaded with torch.load(weights_only=True)).")
def command(file: Path, as_json: bool, family: str | None, allow_pickle: bool) -> None:
    """Show the format, modules per block, rank, alpha and metadata of the LoRA in FILE.

    FILE is a .safetensors LoRA (kohya or diffusers format) or a diffusers folder holding
    pytorch_lora_weights.safetensors. Ranks and alphas that vary per module are listed.
    """
    from lorastudio.models.lora import read_lora

    try:
        summary = read_lora(file, allow_pickle=allow_pickle, family=family).summary()
    except (ValueError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from error
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    click.echo(f"file:    {summary['file']}")
    click.echo(f"format:  {summary['format']} (family {summary['family']})")
    click.echo(f"modules: {summary['modules']}")
    for block, count in summary["modules_per_block"].items():
        click.echo(f"  {block:<28} {count}")
    click.echo(f"rank:    {summary['rank']}" + _varies(summary["ranks"]))
    click.echo(f"alpha:   {summary['alpha']:g}" + _varies(summary["alphas"]))
    metadata = summary["metadata"]
    click.echo(f"metadata: {len(metadata)} keys")
    for key, value in metadata.items():
        shown = value if len(value) <= _MAX_VALUE else value[:_MAX_VALUE] + f"... ({len(value)} chars)"
        click.echo(f"  {key}: {shown}")


def _varies(values: list) -> str:
    if len(values) <= 1:
        return ""
    return " (varies per module: " + ", ".join(f"{v:g}" for v in values) + ")"
