"""`lorastudio audit DATASET`: lint captions and detect style contamination."""

from __future__ import annotations

import click

HELP = """Lint the captions of DATASET and find style contamination.

\b
Text rules: missing / misplaced / misspelled trigger, slots out of the golden order,
empty captions and missing sidecars, Hangul and other non-Latin text, captions over
the text encoder's 75 tokens, repeated and contradictory phrases, many identical
captions, lighting never described, subjective "style constants".

\b
Contamination: pixel detectors (background colour and plainness, high/low key, colour
cast, saturation, contrast, shallow depth of field, vignette), CLIP zero-shot with
--model, and stored tagger tags measure what the images show; an attribute present in
at least --min-present of the images but rarely named in the captions is a contaminant:
the trigger would learn it as part of the style. Only confident calls count: a detector
says present, absent or "cannot tell"; witnesses that disagree, or opposite looks (warm
and cool) both reported, make an image "cannot tell". --fix names an attribute only where
it is confidently present, never beside its opposite, and shows the measured value.

\b
Writes DATASET/audit.json and an audit section in DATASET/report.html (or audit.html).
Exit code: 0 clean, 1 with errors (with warnings too under --strict).

\b
Examples:
  lorastudio audit ds/
  lorastudio audit ds/ --pack food.korean --pack my_pack.yaml --format json
  lorastudio audit ds/ --tokenizer models/sd15 --strict
  lorastudio audit ds/ --fix           # show what --fix would change
  lorastudio audit ds/ --fix --yes     # apply it (undo: lorastudio caption ds/ --undo)
"""


@click.command(help=HELP)
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--pack", "packs", multiple=True, default=("food.korean",), show_default=True,
              help="Vocabulary pack: a shipped name (core.photo, food, food.korean) or a YAML path. Repeatable.")
@click.option("--model", default=None, help="CLIP/SigLIP hub id or local folder for zero-shot detection (optional).")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Base model or tokenizer folder for exact token counts (default: an approximation).")
@click.option("--family", type=click.Choice(["sd15", "sd2", "sdxl", "flux"]), default="sd15", show_default=True,
              help="Model family the captions are for.")
@click.option("--trigger", default=None, help="Trigger word (default: the one in dataset.json).")
@click.option("--min-present", type=click.FloatRange(0.0, 1.0), default=0.6, show_default=True,
              help="Share of images above which an unnamed attribute is a contaminant.")
@click.option("--fix", is_flag=True, help="Name each contaminant in slot 4 where it is present but unnamed (shows a diff).")
@click.option("--yes", is_flag=True, help="With --fix: apply the changes (kept in the caption history).")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text", show_default=True,
              help="What to print on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def command(dataset: str, packs: tuple[str, ...], model: str | None, tokenizer_dir: str | None, family: str,
            trigger: str | None, min_present: float, fix: bool, yes: bool, strict: bool, fmt: str, quiet: bool) -> None:
    """Run the audit, write its files, optionally fix, and exit with the gate's code."""
    from pathlib import Path

    opts = dict(packs=packs, family=family, tokenizer_dir=tokenizer_dir, model=model, min_present=min_present,
                trigger=trigger, progress=not quiet)
    if yes and not fix:
        raise click.UsageError("--yes only makes sense with --fix")
    result, written = _run(Path(dataset), opts)
    if fix and _fix(Path(dataset), result, packs, apply=yes, to_stderr=fmt != "text"):
        result, written = _run(Path(dataset), opts)
    _emit(result, fmt)
    click.echo(f"wrote {written[0]} and {written[1]}", err=True)
    click.get_current_context().exit(result.exit_code(strict))


def _run(dataset, opts):
    """audit_dataset + audit.json + the HTML section; input problems become ClickExceptions."""
    from lorastudio.audit import audit_dataset
    from lorastudio.audit.report import write_audit_json, write_html
    from lorastudio.captions.tokens import TokenizerNotFound
    from lorastudio.captions.vocab import VocabularyError
    from lorastudio.data.manifest import ManifestError

    try:
        result = audit_dataset(dataset, **opts)
    except (ManifestError, VocabularyError, TokenizerNotFound) as exc:
        raise click.ClickException(str(exc)) from None
    return result, (write_audit_json(result), write_html(result))


def _fix(dataset, result, packs, *, apply: bool, to_stderr: bool) -> bool:
    """Show (and with `apply`, make) the --fix changes; True when captions changed."""
    from lorastudio.audit.fix import apply_fixes, format_diff, plan_fixes
    from lorastudio.captions.vocab import load_vocabulary
    from lorastudio.data.manifest import read_manifest

    records = read_manifest(dataset)
    changes = plan_fixes(result.contamination, records, load_vocabulary(packs))
    if not changes:
        click.echo("--fix: no contaminant to name; nothing to change.", err=to_stderr)
        return False
    click.echo(format_diff(changes), err=to_stderr)
    if not apply:
        click.echo(f"--fix: {len(changes)} caption(s) would change; nothing was changed (add --yes to apply).",
                   err=to_stderr)
        return False
    apply_fixes(dataset, records, changes)
    click.echo(f"--fix: updated {len(changes)} caption(s) and their sidecars "
               f"(undo: lorastudio caption {dataset} --undo).", err=to_stderr)
    return True


def _emit(result, fmt: str) -> None:
    from lorastudio.audit.report import format_text, standalone_html

    if fmt == "json":
        click.echo(result.to_json(), nl=False)
    elif fmt == "html":
        click.echo(standalone_html(result), nl=False)
    else:
        click.echo(format_text(result))

