"""Entry point. Commands are imported only when invoked so `lorastudio --help` stays instant.

Each command lives in its own module under `lorastudio.cli` and exposes a click command
named `command`. A module that does not exist yet is simply not listed.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util

import click

from lorastudio import __version__

# name -> (module, one-line help). The help text is duplicated here on purpose: listing the
# commands must not import them.
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("lorastudio.cli.prepare", "Ingest raw photos into a dataset dir (validate, dedupe, bucket, resize)."),
    "caption": ("lorastudio.cli.caption", "Write golden-order captions with a captioning backend."),
    "captions": ("lorastudio.cli.captions", "Edit captions in bulk and show phrase statistics."),
    "audit": ("lorastudio.cli.audit", "Lint captions and detect style contamination."),
    "init-config": ("lorastudio.cli.init_config", "Print a fully commented training config."),
    "train": ("lorastudio.cli.train", "Train a LoRA from a config file."),
    "export": ("lorastudio.cli.export", "Convert a LoRA between kohya and diffusers formats."),
    "extract-lora": ("lorastudio.cli.extract_lora", "Extract a kohya LoRA from a fine-tuned (DreamBooth) model by SVD."),
    "inspect": ("lorastudio.cli.inspect", "Show a LoRA file's format, modules, rank, alpha and metadata."),
    "generate": ("lorastudio.cli.generate", "Text-to-image with one or more LoRAs."),
    "enhance": ("lorastudio.cli.enhance", "Image-to-image with a style LoRA."),
    "sample": ("lorastudio.cli.sample", "Fixed-seed grids of prompts x LoRA scales x checkpoints."),
    "evaluate": ("lorastudio.cli.evaluate", "Score checkpoints and recommend one."),
    "report": ("lorastudio.cli.report", "Write a run's self-contained HTML report."),
    "demo": ("lorastudio.cli.demo", "Run the whole workflow on a generated toy dataset."),
    "make-tiny": ("lorastudio.cli.make_tiny", "Build a tiny (or SD1.5-size) random model in diffusers layout."),
    "serve": ("lorastudio.cli.serve", "Serve generate / enhance / train as an HTTP API with GPU workers."),
    "keys": ("lorastudio.cli.keys", "Create, list and revoke API keys for `lorastudio serve`."),
    "doctor": ("lorastudio.cli.doctor", "Show versions, devices and extras; name known-bad combinations and the fix."),
}
# Commands that run even when the environment has a known-bad combination (they report it).
UNCHECKED = frozenset({"doctor"})


def _available() -> dict[str, tuple[str, str]]:
    return {name: spec for name, spec in COMMANDS.items() if importlib.util.find_spec(spec[0]) is not None}


def _checked(callback):
    """Run the known-incompatibility check (milliseconds, no heavy import) before a command."""

    @functools.wraps(callback)
    def run(*args, **kwargs):
        from lorastudio.environment import incompatibilities

        problems = incompatibilities()
        if problems:
            raise click.ClickException(problems[0].message + "  (`lorastudio doctor` shows everything)")
        return callback(*args, **kwargs)

    return run


class LazyGroup(click.Group):
    """A click group that imports a command's module only when that command runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_available())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = _available().get(cmd_name)
        if spec is None:
            return None
        module = importlib.import_module(spec[0])
        command = module.command
        if cmd_name not in UNCHECKED and not getattr(command, "_environment_checked", False):
            command.callback = _checked(command.callback)
            command._environment_checked = True
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, help_text) in _available().items()]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lorastudio")
def cli() -> None:
    """lorastudio: make the data right, train a LoRA fast and safely, prove what it learned.

    \b
    Typical flow:
      lorastudio prepare photos/ --out ds/           # validate, dedupe, bucket, resize
      lorastudio caption ds/ --backend clip-probe --trigger ohwx_kfood_style
      lorastudio audit ds/                           # catch style contamination
      lorastudio init-config --family sd15 > cfg.yaml
      lorastudio train cfg.yaml data.datasets=[ds]

    Run `lorastudio COMMAND --help` for each command's options.
    """


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
