"""`lorastudio prepare`: raw photos -> dataset dir."""

from __future__ import annotations

import os
from pathlib import Path

import click


def _split_args(args: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Positional args are sources, except `key=value` words that are not existing paths."""
    sources: list[str] = []
    overrides: list[str] = []
    for arg in args:
        if "=" in arg and not os.path.exists(arg):
            overrides.append(arg)
        else:
            sources.append(arg)
    return sources, overrides


def _flag_overrides(**flags: object) -> list[str]:
    items = []
    for key, value in flags.items():
        if value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        items.append(f"{key}={text}")
    return items


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("args", nargs=-1, required=True, metavar="SRC... [KEY=VALUE]...")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Dataset dir to create or update.")
@click.option("--reg", "reg", multiple=True, type=click.Path(exists=True, file_okay=False), help="Folder of regularization images (role: reg). Repeatable.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), help="YAML file with PrepareConfig keys.")
@click.option("--resolution", type=int, help="Training resolution (area cap of the buckets). Default 512.")
@click.option("--min-side", type=int, help="Reject images whose shorter side is below this. Default 256.")
@click.option("--no-upscale", "no_upscale", is_flag=True, default=None, help="Never upscale: kohya's no-upscale buckets.")
@click.option("--square", is_flag=True, default=None, help="One square bucket, centre crop.")
@click.option("--max-pixels", type=int, help="Header pixel-count limit checked before decoding. Default 64000000.")
@click.option("--workers", type=int, help="Worker processes (0 = all cores).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Config override, e.g. --set near_duplicate_threshold=4. Repeatable.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def command(args, out_dir, reg, config_path, resolution, min_side, no_upscale, square, max_pixels, workers, sets, quiet):
    """Turn folders of raw photos into a dataset dir (manifest.jsonl, images/, report.html).

    \b
    Each SRC is a folder (walked recursively) or a single image file. What happens:
      * decode safely: size and pixel limits are checked from the header first; empty,
        truncated, corrupt, non-image, oversized and unsupported files are rejected with
        a reason in rejected.jsonl, and the run goes on;
      * normalise: EXIF rotation baked in; CMYK, palette, 16-bit, greyscale and alpha
        become 8-bit sRGB RGB (alpha on `background`, flagged); ICC converted to sRGB;
      * dedupe: identical bytes and near-identical pictures (perceptual hash) keep the
        largest copy; the rest are rejected with duplicate_of;
      * flag blurry, under/over-exposed and upscaled images;
      * bucket like kohya (area <= resolution^2, sides in steps of 64), scale to cover,
        centre-crop, and record the crop box.
    Folder names like `10_food` set repeats=10 (kohya). Captions in photo.txt or
    photo.caption beside a photo are carried over. Hidden files are skipped.

    \b
    Re-running into the same --out is incremental: unchanged photos (same sha256) are not
    processed again and captions already in the dataset are kept. Source files are never
    modified. Exit codes: 0 done, 1 nothing accepted or a fatal error, 2 usage error.

    \b
    Examples:
      lorastudio prepare photos/ --out ds/
      lorastudio prepare photos/10_kfood extra.jpg --out ds/ --reg reg_photos/ --resolution 1024
      lorastudio prepare photos/ --out ds/ --config prepare.yaml near_duplicate_threshold=4
    """
    from lorastudio.config.loader import ConfigError, load_config
    from lorastudio.data.prepare import PrepareConfig, PrepareError, check_paths, run_prepare

    sources, positional_overrides = _split_args(args)
    if not sources:
        raise click.UsageError("give at least one SRC folder or image file")
    for src in sources:
        if not os.path.exists(src):
            raise click.UsageError(f"input '{src}' does not exist")
    flags = _flag_overrides(
        resolution=resolution,
        min_side=min_side,
        upscale=False if no_upscale else None,
        square=square,
        max_pixels=max_pixels,
        workers=workers,
    )
    try:
        cfg = load_config(PrepareConfig, config_path, [*flags, *sets, *positional_overrides])
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        check_paths(sources, list(reg), out_dir)
    except PrepareError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        result = run_prepare(cfg, sources, out_dir, reg=list(reg), progress=not quiet)
    except PrepareError as exc:
        raise click.ClickException(str(exc)) from None
    for line in result.summary_lines():
        click.echo(line)
    if not result.records:
        click.echo(f"error: no image was accepted; see {out_dir / 'rejected.jsonl'} for the reasons", err=True)
        raise SystemExit(1)
