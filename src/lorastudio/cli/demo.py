"""`lorastudio demo`: the whole workflow on a generated toy dataset, in a few minutes on a CPU."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(name="demo", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_out"),
              show_default=True, help="Folder for everything the demo makes: new, empty, or a previous demo's output "
                   "(which is replaced; a folder holding anything else is refused).")
@click.option("--images", type=click.IntRange(min=4), default=20, show_default=True, help="Photos to generate.")
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True, help="LoRA training steps.")
@click.option("--seeds", type=click.IntRange(min=1), default=2, show_default=True,
              help="Seeds per held-out prompt for the base-vs-LoRA samples.")
@click.option("--base", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Base model folder (diffusers layout). Default: the shipped toy-world model.")
def command(out_dir: Path, images: int, steps: int, seeds: int, base: Path | None) -> None:
    """Run prepare -> caption -> audit -> audit --fix -> train -> samples on generated photos.

    \b
    The demo draws 20 "phone photos" (320x240 JPEGs) of one style: glossy Korean dishes.
    Every photo also shows a black background and sesame seeds, and the sidecar captions
    never mention them. Watch the audit flag that confounder, --fix name it in the
    captions, a LoRA train on the result, and the base model and the LoRA render the same
    prompts that ask for other backgrounds. Everything lands in --out; open
    OUT/report.html in a browser. Your files are never touched: running the demo
    again replaces only its own previous output.

    \b
    Examples:
      lorastudio demo                      # writes demo_out/
      lorastudio demo --out /tmp/demo --steps 60 --images 8
    """
    from lorastudio.toyworld.demo import DemoOptions, run_demo

    opts = DemoOptions(images=images, steps=steps, seeds=seeds, base=base)
    try:
        result = run_demo(out_dir, opts, say=click.echo)
    except (FileExistsError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    failed = [name for name, status in result.stages.items() if status.startswith("failed")]
    click.echo(f"done in {sum(result.seconds.values()):.0f} s. Open {result.report} in a browser.")
    if failed:
        raise click.ClickException(f"stages failed: {', '.join(failed)}")
