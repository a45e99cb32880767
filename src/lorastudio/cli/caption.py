"""`lorastudio caption DATASET`: write golden-order captions with a backend, or undo a change."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from lorastudio.captions.backends import BACKENDS, DTYPES

EPILOG = """\b
Examples:
  lorastudio caption ds/ --backend manual --from captions.csv --trigger ohwx_kfood_style
  lorastudio caption ds/ --backend clip-probe --model openai/clip-vit-base-patch32 \\
      --trigger ohwx_kfood_style --subject-from folder
  lorastudio caption ds/ --undo          # revert the last caption change or bulk edit
\b
Slots: backend slots win; otherwise free text is parsed and tags are mapped through the
vocabulary packs into shot / objective / style. Phrases that fit nowhere are kept and
flagged. Hangul is translated with the Korean food glossary; unknown Hangul is reported.
"""


def _parse_options(items: tuple[str, ...]) -> dict:
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"'{item}' is not KEY=VALUE", param_hint="--option")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


@click.command(name="caption", epilog=EPILOG)
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--backend", type=click.Choice(list(BACKENDS)), help="Captioner to run (required unless --undo).")
@click.option("--model", help="Hub id or local folder of the backend's model (manual: the CSV/JSONL/folder).")
@click.option("--revision", help="Model revision (hub branch, tag or commit) recorded in the provenance.")
@click.option("--from", "from_path", type=click.Path(exists=True, path_type=Path),
              help="manual backend: a CSV/JSONL with file,caption or a folder of .txt sidecars. "
                   "Without it, sidecars next to the original photos are used.")
@click.option("--trigger", help="Trigger word, written first in every caption and into dataset.json.")
@click.option("--subject", help="Subject for every image, e.g. 'yangnyeom chicken' or '양념치킨'.")
@click.option("--subject-from", type=click.Choice(["folder", "filename"]),
              help="Take the subject from each original photo's folder or file name.")
@click.option("--subject-template", default="a photo of {}", show_default=True,
              help="How a bare subject becomes slot 2; '{}' is the subject.")
@click.option("--only-missing/--overwrite", default=True, show_default=True,
              help="Caption only images without a caption, or recaption all (old versions stay in history).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Images per backend call.")
@click.option("--save-every", type=click.IntRange(min=1), help="Save progress every N images (default: every batch).")
@click.option("--device", default="cpu", show_default=True, help="torch device for model backends (cpu, cuda, cuda:1, mps).")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True, help="Model weight dtype.")
@click.option("--pack", "packs", multiple=True, default=("food.korean",), show_default=True,
              help="Vocabulary pack name or YAML path (repeatable).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Backend-specific option (repeatable).")
@click.option("--undo", is_flag=True, help="Revert the most recent caption change (run or bulk edit) and exit.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(dataset: Path, backend: str | None, model: str | None, revision: str | None, from_path: Path | None,
            trigger: str | None, subject: str | None, subject_from: str | None, subject_template: str,
            only_missing: bool, batch_size: int, save_every: int | None, device: str, dtype: str,
            packs: tuple[str, ...], options: tuple[str, ...], undo: bool, quiet: bool) -> None:
    """Caption the images of DATASET (a dir written by `lorastudio prepare`) in golden order.

    Progress is saved to manifest.jsonl after every batch, so an interrupted run continues
    where it stopped when started again. Sidecar .txt files are rewritten to match.
    """
    from lorastudio.captions.backends import BackendError, get_backend
    from lorastudio.captions.run import CaptionOptions, caption_dataset
    from lorastudio.captions.vocab import VocabularyError, load_vocabulary
    from lorastudio.data.manifest import ManifestError

    if undo:
        _undo(dataset)
        return
    if backend is None:
        raise click.UsageError("--backend is required (or use --undo)")
    if "{}" not in subject_template:
        raise click.BadParameter("must contain '{}'", param_hint="--subject-template")
    opts = _parse_options(options)
    if from_path is not None:
        opts["from"] = str(from_path)
    try:
        vocab = load_vocabulary(packs)
        impl = get_backend(backend, model=model, revision=revision, device=device, dtype=dtype, vocab=vocab, options=opts)
        run_opts = CaptionOptions(trigger=trigger, subject=subject, subject_from=subject_from,
                                  subject_template=subject_template, overwrite=not only_missing,
                                  batch_size=batch_size, save_every=save_every)
        summary = caption_dataset(dataset, impl, vocab, run_opts, progress=not quiet)
    except (ManifestError, BackendError, VocabularyError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"captioned {len(summary.captioned)} image(s); skipped {summary.skipped} already captioned"
               + (f"; resumed after {summary.resumed}" if summary.resumed else ""))
    _report_words("unmapped Hangul (add it to the glossary or rename)", summary.unmapped_hangul)
    _report_words("unplaced phrases (kept; not in the vocabulary)", summary.unplaced)
    if summary.no_output:
        _report_uncaptioned(summary, impl.provenance())


# What to try when a backend returns nothing, by backend name.
_EMPTY_HINTS = {
    "manual": "check that --from names the right CSV/JSONL (columns file and caption) or that the images "
              "have .txt sidecars",
    "hf-caption": "try another --model, a shorter or no --option prompt=..., or --dtype float32 "
                  "(half precision can decode to empty text)",
    "hf-vlm": "try another --model, a plainer --option prompt=..., or --dtype float32 "
              "(half precision can decode to empty text)",
    "tagger": "try a lower --option general_threshold=... (default 0.35)",
    "clip-probe": "try a lower --option threshold=... or another --pack",
}


def _report_uncaptioned(summary, provenance: dict) -> None:
    """Name the images left without a caption; a run that captioned none of them fails."""
    name = provenance.get("backend", "?")
    model = provenance.get("model")
    who = f"backend '{name}'" + (f" with model {model}" if model else "")
    missing = summary.no_output
    shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    given = summary.given or len(missing)
    if len(missing) == given:
        hint = _EMPTY_HINTS.get(name, "try another backend or model")
        raise click.ClickException(f"{who} returned no caption for any of the {given} image(s) it was given "
                                   f"({shown}); nothing was written. {hint[0].upper() + hint[1:]}.")
    click.echo(f"warning: {len(missing)} of {given} image(s) were left uncaptioned by {who}: {shown}. "
               "Fix them (or caption them by hand) and rerun with --only-missing.", err=True)


def _report_words(title: str, per_record: dict[str, list[str]]) -> None:
    if not per_record:
        return
    counts = Counter(w for words in per_record.values() for w in set(words))
    top = ", ".join(f"{w} ({n})" for w, n in counts.most_common(10))
    click.echo(f"{title}: {len(per_record)} image(s): {top}", err=True)


def _undo(dataset: Path) -> None:
    from lorastudio.captions.history import undo_last
    from lorastudio.data.manifest import ManifestError, read_manifest, write_manifest, write_sidecar

    try:
        records = read_manifest(dataset)
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from None
    op, reverted = undo_last(records)
    if op is None:
        raise click.ClickException(f"{dataset}: no caption change to undo")
    write_manifest(dataset, records)
    by_id = {r["id"]: r for r in records}
    for rid in reverted:
        write_sidecar(dataset, by_id[rid])
    click.echo(f"undid change {op}: {len(reverted)} caption(s) restored")
