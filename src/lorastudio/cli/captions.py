"""`lorastudio captions DATASET ...`: bulk caption edits, phrase statistics and token budget."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click

SLOT_CHOICE = click.Choice(["shot", "objective", "style", "unplaced"])


def _vocab(packs: tuple[str, ...]):
    from lorastudio.captions.vocab import VocabularyError, load_vocabulary

    try:
        return load_vocabulary(packs)
    except VocabularyError as exc:
        raise click.ClickException(str(exc)) from None


def _records(dataset: Path) -> list[dict]:
    from lorastudio.data.manifest import ManifestError, read_manifest

    try:
        return read_manifest(dataset)
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(name="captions", epilog="""\b
Examples:
  lorastudio captions ds/ stats
  lorastudio captions ds/ rename-trigger ohwx_kfood sks_kfood --dry-run
  lorastudio captions ds/ add-phrase --slot objective "plain background" --where "black background"
  lorastudio captions ds/ remove-phrase "masterpiece"
  lorastudio captions ds/ replace "platter" "plate"
  lorastudio captions ds/ tokens --tokenizer path/to/model
Every edit is recorded in the caption history: `lorastudio caption ds/ --undo` reverts it.""")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--pack", "packs", multiple=True, default=("food.korean",), show_default=True,
              help="Vocabulary pack name or YAML path (repeatable); used for synonyms and --where.")
@click.pass_context
def command(ctx: click.Context, dataset: Path, packs: tuple[str, ...]) -> None:
    """Edit the captions of DATASET in bulk, or inspect them."""
    ctx.obj = {"dataset": dataset, "packs": packs}


def _edit_options(fn: Callable) -> Callable:
    fn = click.option("--dry-run", is_flag=True, help="Show the diff; change nothing.")(fn)
    fn = click.option("--where", help="Only captions naming this phrase (vocabulary synonyms count) or holding this text.")(fn)
    return fn


def _run_edit(ctx: click.Context, edit: Callable, name: str, params: dict, where: str | None, dry_run: bool) -> None:
    from lorastudio.captions.edit import apply_edit, phrase_diff
    from lorastudio.data.manifest import ManifestError

    dataset = ctx.obj["dataset"]
    try:
        result = apply_edit(dataset, edit, name=name, params=params, where=where,
                            vocab=_vocab(ctx.obj["packs"]), dry_run=dry_run)
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from None
    for rid, before, after in result.changes:
        click.echo(f"{rid}:")
        for line in phrase_diff(before, after):
            click.echo(f"  {line}")
    verb = "would change" if dry_run else "changed"
    click.echo(f"{name}: {verb} {len(result.changes)} of {result.selected} selected caption(s)"
               + ("" if dry_run or not result.changes else f" (undo: lorastudio caption {dataset} --undo)"))


@command.command("rename-trigger")
@click.argument("old")
@click.argument("new")
@_edit_options
@click.pass_context
def rename_trigger_cmd(ctx: click.Context, old: str, new: str, where: str | None, dry_run: bool) -> None:
    """Rename the trigger OLD to NEW in every caption (and in dataset.json)."""
    from lorastudio.captions.edit import rename_dataset_trigger, rename_trigger

    _run_edit(ctx, lambda c: rename_trigger(c, old, new), "rename-trigger", {"old": old, "new": new}, where, dry_run)
    if not dry_run and rename_dataset_trigger(ctx.obj["dataset"], old, new):
        click.echo(f"dataset.json trigger: {old} -> {new}")


@command.command("add-phrase")
@click.argument("phrase")
@click.option("--slot", type=SLOT_CHOICE, required=True, help="Slot to append to: shot (3), objective (4), style (5).")
@_edit_options
@click.pass_context
def add_phrase_cmd(ctx: click.Context, phrase: str, slot: str, where: str | None, dry_run: bool) -> None:
    """Add PHRASE to a slot of every (selected) caption that lacks it."""
    from lorastudio.captions.edit import add_to_slot

    _run_edit(ctx, lambda c: add_to_slot(c, slot, phrase), "add-phrase", {"slot": slot, "phrase": phrase}, where, dry_run)


@command.command("remove-phrase")
@click.argument("phrase")
@click.option("--slot", type=SLOT_CHOICE, help="Only remove it from this slot.")
@click.option("--synonyms", is_flag=True, help="Also remove vocabulary synonyms of PHRASE.")
@_edit_options
@click.pass_context
def remove_phrase_cmd(ctx: click.Context, phrase: str, slot: str | None, synonyms: bool, where: str | None,
                      dry_run: bool) -> None:
    """Remove PHRASE (case and articles ignored) from every (selected) caption."""
    from lorastudio.captions.edit import remove_from_slots

    vocab = _vocab(ctx.obj["packs"]) if synonyms else None
    _run_edit(ctx, lambda c: remove_from_slots(c, phrase, slot, vocab), "remove-phrase",
              {"phrase": phrase, "slot": slot, "synonyms": synonyms}, where, dry_run)


@command.command("replace")
@click.argument("find")
@click.argument("replacement")
@click.option("--regex", is_flag=True, help="FIND is a regular expression (case-insensitive).")
@_edit_options
@click.pass_context
def replace_cmd(ctx: click.Context, find: str, replacement: str, regex: bool, where: str | None, dry_run: bool) -> None:
    """Replace FIND with REPLACEMENT inside every phrase (the trigger is left alone)."""
    import re

    from lorastudio.captions.edit import find_replace

    if regex:
        try:
            re.compile(find)
        except re.error as exc:
            raise click.BadParameter(f"not a valid regular expression: {exc}", param_hint="FIND") from None
    _run_edit(ctx, lambda c: find_replace(c, find, replacement, regex), "replace",
              {"find": find, "replace": replacement, "regex": regex}, where, dry_run)


@command.command("stats")
@click.option("--slot", type=click.Choice(["trigger", "subject", "shot", "objective", "style", "unplaced"]),
              help="Only this slot.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows instead of a table.")
@click.pass_context
def stats_cmd(ctx: click.Context, slot: str | None, as_json: bool) -> None:
    """Phrase-frequency table: how many images use each phrase, per slot."""
    from lorastudio.captions.edit import phrase_stats

    records = _records(ctx.obj["dataset"])
    rows = [r for r in phrase_stats(records, _vocab(ctx.obj["packs"])) if slot is None or r.slot == slot]
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in rows], ensure_ascii=False, indent=1))
        return
    captioned = sum(1 for r in records if r.get("caption_text"))
    click.echo(f"{captioned} of {len(records)} image(s) captioned")
    click.echo(f"{'slot':<10} {'images':>6}  {'share':>5}  phrase  [attribute]")
    for row in rows:
        share = row.images / max(captioned, 1)
        attr = f"  [{row.attribute}]" if row.attribute else ""
        click.echo(f"{row.slot:<10} {row.images:>6}  {share:>5.0%}  {row.phrase}{attr}")


@command.command("tokens")
@click.option("--tokenizer", "tokenizer_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The base model folder (uses its tokenizer/ and tokenizer_2/) or a tokenizer folder.")
@click.option("--trigger", help="Trigger to show tokenized (default: dataset.json's trigger).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.pass_context
def tokens_cmd(ctx: click.Context, tokenizer_dir: Path, trigger: str | None, as_json: bool) -> None:
    """Token count of every caption per text encoder, captions over budget, and the trigger split."""
    from lorastudio.captions.tokens import TokenizerNotFound, load_tokenizers, token_report
    from lorastudio.data.manifest import ManifestError, read_dataset_json

    records = _records(ctx.obj["dataset"])
    if trigger is None:
        try:
            trigger = read_dataset_json(ctx.obj["dataset"]).get("trigger")
        except ManifestError:
            trigger = None
    try:
        tokenizers = load_tokenizers(tokenizer_dir)
    except (TokenizerNotFound, OSError, ValueError) as exc:
        raise click.ClickException(f"cannot load a tokenizer from {tokenizer_dir}: {exc}") from None
    report = token_report(records, tokenizers, trigger)
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=1))
        return
    for name, limit in report.limits.items():
        counts = [c[name] for c in report.counts.values()]
        if counts:
            click.echo(f"{name}: {len(counts)} caption(s), tokens min {min(counts)} / "
                       f"mean {sum(counts) / len(counts):.1f} / max {max(counts)} (limit {limit})")
    for rid, name, n in report.over:
        click.echo(f"over budget: {rid} {name} {n} tokens (limit {report.limits[name]}; the rest is cut off)")
    if not report.over:
        click.echo("no caption over the token budget")
    for name, pieces in report.trigger_tokens.items():
        click.echo(f"trigger '{trigger}' -> {len(pieces)} token(s) in {name}: {' '.join(pieces)}")
