"""`lorastudio inspect`: what a LoRA file holds (format, coverage, rank, alpha, metadata)."""

from __future__ import annotations

import json
from pathlib import Path

import click

_MAX_VALUE = 160  # long metadata values (tag frequencies) are cut in the text view, never in --json


@click.command()
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--family", type=click.Choice(["sd15", "sd2", "sdxl", "flux"]), default=None,
              help="Base model family. Default: guessed from key names and ss_* metadata.")
@click.option("--allow-pickle", is_flag=True,
              help="Accept a .ckpt/.pt/.bin file (loaded with torch.load(weights_only=True)).")
def command(file: Path, as_json: bool, family: str | None, allow_pickle: bool) -> None:
    """Show the format, modules per block, rank, alpha and metadata of the LoRA in FILE.

    FILE is a .safetensors LoRA or a diffusers folder holding pytorch_lora_weights.safetensors.
    Read in full: kohya (A1111 / ComfyUI), LyCORIS LoCon, diffusers / PEFT and the older
    diffusers key style. Named, with their metadata: LyCORIS LoHa / LoKr / Tucker / IA3 /
    GLoRA / full, DoRA, OFT and transformer (Flux / SD3) LoRAs. Ranks and alphas that vary
    per module are listed. A file that is not safetensors (a renamed pickle, a truncated
    download) is named as such in one line.
    """
    from lorastudio.models.lora import read_lora
    from lorastudio.models.lora_formats import UnsupportedLoraError

    if _show_method_output(file, as_json):
        return
    try:
        summary = read_lora(file, allow_pickle=allow_pickle, family=family).summary()
    except UnsupportedLoraError as error:
        if error.format.name == "unknown":
            raise click.ClickException(str(error)) from None
        _show_unreadable(file, error, as_json)
        return
    except (ValueError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    click.echo(f"file:    {summary['file']}")
    click.echo(f"format:  {summary['format']} (family {summary['family']}): {summary['format_label']}")
    click.echo(f"modules: {summary['modules']}")
    for block, count in summary["modules_per_block"].items():
        click.echo(f"  {block:<28} {count}")
    click.echo(f"rank:    {summary['rank']}" + _varies(summary["ranks"]))
    click.echo(f"alpha:   {summary['alpha']:g}" + _varies(summary["alphas"]))
    if summary.get("coverage"):
        click.echo(f"keys:    {summary['coverage']}")
    _echo_metadata(summary["metadata"])


def _show_unreadable(file: Path, error, as_json: bool) -> None:
    """What can be said of a LoRA style lorastudio does not parse: its name, size and metadata."""
    from lorastudio.models.lora import resolve_lora_path
    from lorastudio.models.weights_file import read_header

    header = read_header(resolve_lora_path(file))
    summary = {"file": str(file), "format": error.format.name, "format_label": error.format.label,
               "tensors": len(header.tensors), "convertible": False,
               "diffusers_loads": error.format.diffusers_loads, "note": str(error),
               "metadata": dict(sorted(header.metadata.items()))}
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    click.echo(f"file:    {file}")
    click.echo(f"format:  {error.format.name}: {error.format.label}")
    click.echo(f"tensors: {len(header.tensors)}")
    click.echo(f"note:    {error}")
    _echo_metadata(summary["metadata"])


def _echo_metadata(metadata: dict) -> None:
    click.echo(f"metadata: {len(metadata)} keys")
    for key, value in metadata.items():
        shown = value if len(value) <= _MAX_VALUE else value[:_MAX_VALUE] + f"... ({len(value)} chars)"
        click.echo(f"  {key}: {shown}")


def _varies(values: list) -> str:
    if len(values) <= 1:
        return ""
    return " (varies per module: " + ", ".join(f"{v:g}" for v in values) + ")"


def _show_method_output(file: Path, as_json: bool) -> bool:
    """A TI / pivotal / DreamBooth run folder (lorastudio.json) or an embedding file; False otherwise."""
    from lorastudio.models.embeddings import is_embedding_file
    from lorastudio.models.weights_file import WeightsFileError, read_header

    if file.is_dir() and (file / "lorastudio.json").is_file():
        summary = json.loads((file / "lorastudio.json").read_text(encoding="utf-8"))
    elif file.is_file() and file.suffix == ".safetensors":
        try:
            header = read_header(file)
        except WeightsFileError:
            return False
        shapes = {k: _Dims(len(v.shape)) for k, v in header.tensors.items()}
        if not is_embedding_file(shapes):
            return False
        summary = {"file": str(file), "format": "embedding", "trigger": file.stem,
                   "method": header.metadata.get("lorastudio.method", "unknown"),
                   "vectors": {k: list(v.shape) for k, v in header.tensors.items()},
                   "prompt": {"a1111": file.stem, "comfyui": f"embedding:{file.stem}"},
                   "metadata": dict(sorted(header.metadata.items()))}
    else:
        return False
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        for key, value in summary.items():
            click.echo(f"{key + ':':<9}{value if not isinstance(value, dict) else json.dumps(value)}")
    return True


class _Dims:
    def __init__(self, ndim: int) -> None:
        self.ndim = ndim
