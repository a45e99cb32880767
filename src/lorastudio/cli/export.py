"""`lorastudio export`: convert a LoRA file between the kohya and diffusers formats."""

from __future__ import annotations

import json
from pathlib import Path

import click

_EPILOG = """\b
Examples:
  lorastudio export run/final/lora.safetensors --to diffusers --out my_lora_diffusers/
  lorastudio export other_trainer.safetensors --to diffusers --family sd15
  lorastudio export my_lora_diffusers/ --to kohya --out my_lora.safetensors
  lorastudio export sdxl_lora/ --to kohya --base tiny_sdxl_model/ --force

\b
kohya files (lora_unet_* / lora_te_* keys, .lora_down/.lora_up/.alpha) load in A1111,
ComfyUI and diffusers; SDXL ones use LDM block names and lora_te1_/lora_te2_. diffusers
files (unet.*.lora_A/lora_B, LoraConfig in the header) load with pipe.load_lora_weights.
Alphas are carried exactly; a kohya file without .alpha keys means alpha = rank.
"""


def _layout_from_base(base: Path | None):
    from lorastudio.models.kohya_keys import UNetLayout

    if base is None:
        return None
    config_file = base / "unet" / "config.json"
    if not config_file.is_file():
        raise click.ClickException(f"--base {base}: no unet/config.json inside (expected a diffusers model folder)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        return UNetLayout.from_unet_config(config)
    except (ValueError, KeyError) as error:
        raise click.ClickException(f"{config_file}: cannot read the UNet layout ({error})") from error


@click.command(epilog=_EPILOG)
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@click.option("--to", "to", type=click.Choice(["kohya", "diffusers"]), required=True,
              help="Target format.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output file (.safetensors) or, for diffusers, a folder. "
                   "Default: beside FILE, named <name>-kohya.safetensors or <name>-diffusers/.")
@click.option("--family", type=click.Choice(["sd15", "sd2", "sdxl", "flux"]), default=None,
              help="Base model family. Default: guessed from key names and ss_* metadata.")
@click.option("--base", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Diffusers model folder whose unet/config.json gives the SDXL block layout "
                   "(needed only for SDXL UNets whose layout differs from SDXL base).")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--allow-pickle", is_flag=True,
              help="Accept a .ckpt/.pt/.bin input (loaded with torch.load(weights_only=True)). "
                   "Only for files from a source you trust.")
def command(file: Path, to: str, out: Path | None, family: str | None, base: Path | None,
            force: bool, allow_pickle: bool) -> None:
    """Convert the LoRA in FILE (a .safetensors file or a diffusers folder) to another format.

    The input is never modified; an existing output is kept unless --force is given.
    """
    from lorastudio.models.lora import convert, read_lora

    layout = _layout_from_base(base)
    try:
        written = convert(file, out, to, family, layout=layout, overwrite=force, allow_pickle=allow_pickle)
        result = read_lora(written, family=family, layout=layout)
    except (ValueError, FileExistsError, FileNotFoundError, TypeError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"wrote {written} ({to}, family {result.family}, {len(result.modules)} modules, "
               f"rank {result.rank}, alpha {result.alpha:g})")
