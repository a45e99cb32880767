"""`audit_dataset`: text rules + detectors + contamination table for one dataset dir.

This is the entry point both `lorastudio audit` and `lorastudio train` (which audits
before it trains) call. It reads the dataset dir and never writes to it; writing
`audit.json`, the HTML section and `--fix` changes are separate steps (report.py, fix.py).
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from lorastudio.audit.contamination import AttributeRow, contamination_findings, contamination_table
from lorastudio.audit.rules import Finding, TokenBudget, build_entries, infer_trigger, run_text_rules, sort_findings
from lorastudio.config.loader import Schema


class AuditOptions(Schema):
    """Audit settings (also the `audit:` section a training config may carry)."""

    packs: list[str] = Field(default_factory=lambda: ["food.korean"],
                             description="vocabulary packs: shipped names (core.photo, food, food.korean) or YAML paths")
    family: Literal["sd15", "sd2", "sdxl", "flux"] = Field(default="sd15", description="model family the captions are for")
    tokenizer: str | None = Field(default=None, description="base model (or tokenizer) folder for exact token counts")
    model: str | None = Field(default=None, description="CLIP/SigLIP id or folder for zero-shot detection (optional)")
    min_present: float = Field(default=0.6, ge=0.0, le=1.0,
                               description="share of images above which an unnamed attribute is a contaminant")
    strict: bool = Field(default=False, description="treat warnings as failures")


@dataclass
class AuditResult:
    """Everything an audit found; `to_json()` is what `audit.json` holds."""

    dataset_dir: Path
    findings: list[Finding]
    contamination: list[AttributeRow]
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def has_errors(self) -> bool:
        """True when any finding is an error."""
        return any(f.severity == "error" for f in self.findings)

    @property
    def has_warnings(self) -> bool:
        """True when any finding is a warning."""
        return any(f.severity == "warning" for f in self.findings)

    def counts(self) -> dict[str, int]:
        """Findings per severity."""
        c = Counter(f.severity for f in self.findings)
        return {s: c.get(s, 0) for s in ("error", "warning", "info")}

    def exit_code(self, strict: bool = False) -> int:
        """0 when clean, 1 with errors (or with warnings when `strict`)."""
        return 1 if self.has_errors or (strict and self.has_warnings) else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "dataset": str(self.dataset_dir),
            **self.facts,
            "counts": self.counts(),
            "findings": [f.to_dict() for f in self.findings],
            "contamination": [r.to_dict() for r in self.contamination],
        }

    def to_json(self) -> str:
        """The `audit.json` text."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"


def _inside(root: Path, rel: str) -> Path | None:
    """`root/rel` when it stays inside `root` (no `..` or absolute escapes), else None."""
    candidate = (root / rel).resolve()
    return candidate if candidate.is_relative_to(root.resolve()) else None


@functools.lru_cache(maxsize=4)
def _load_tokenizers(path: str) -> list[tuple[str, Any]]:
    from lorastudio.captions.tokens import load_tokenizers

    return load_tokenizers(path)


def _token_budget(tokenizer_dir: str | Path | None) -> TokenBudget:
    if tokenizer_dir is not None:
        return TokenBudget(_load_tokenizers(str(tokenizer_dir)), approximate=False, source=str(tokenizer_dir))
    from lorastudio.models.tiny import tokenizer_files_dir

    # The shipped tokenizer has a ~1,000-token vocabulary, so it splits words more finely
    # than a real CLIP tokenizer: counts are an upper-side approximation, reported as such.
    return TokenBudget(_load_tokenizers(str(tokenizer_files_dir())), approximate=True,
                       source="the shipped tiny CLIP tokenizer")


def _read_trigger(dataset_dir: Path) -> str | None:
    from lorastudio.data.manifest import DATASET_JSON, read_dataset_json

    if not (dataset_dir / DATASET_JSON).is_file():
        return None
    trigger = read_dataset_json(dataset_dir).get("trigger")
    return str(trigger) if trigger else None


def _locate_images(root: Path, records: Sequence[dict[str, Any]]) -> tuple[list[int], list[Path], list[Finding]]:
    """Indices and paths of readable images; findings for missing or escaping paths."""
    keep, paths, findings = [], [], []
    for i, rec in enumerate(records):
        path = _inside(root, rec["file"])
        if path is None:
            findings.append(Finding("image.outside", "error", rec["id"], f"file '{rec['file']}' points outside the dataset dir",
                                    "re-run `lorastudio prepare`; the audit does not follow such paths"))
        elif not path.is_file():
            findings.append(Finding("image.missing", "error", rec["id"], f"image file '{rec['file']}' is missing",
                                    "re-run `lorastudio prepare` or remove the record"))
        else:
            keep.append(i)
            paths.append(path)
    return keep, paths, findings


def _sidecar_text(root: Path, rec: dict[str, Any]) -> str | None:
    path = _inside(root, str(Path(rec["file"]).with_suffix(".txt")))
    if path is None or not path.is_file():
        return None
    return path.read_text(encoding="utf-8", errors="replace")


def audit_dataset(dataset_dir: Path | str, *, packs: Sequence[str | Path] = ("food.korean",), family: str = "sd15",
                  tokenizer_dir: Path | str | None = None, model: str | None = None, min_present: float = 0.6,
                  trigger: str | None = None, pixel: bool = True, progress: bool = False,
                  vocab=None) -> AuditResult:
    """Audit a dataset dir: text rules, detectors and the contamination table.

    `vocab` (a loaded `Vocabulary`) replaces `packs` when given, so callers that audit
    many datasets parse the pack files once.

    Raises `ManifestError` / `VocabularyError` / `TokenizerNotFound` for unusable inputs;
    everything else about the data becomes a finding.
    """
    from lorastudio.audit.detectors import pixel as pixel_detector
    from lorastudio.audit.detectors import tagger
    from lorastudio.captions.vocab import load_vocabulary
    from lorastudio.data.manifest import read_manifest

    root = Path(dataset_dir)
    records = read_manifest(root)
    vocab = vocab if vocab is not None else load_vocabulary(tuple(packs))
    entries = build_entries(((r["id"], r.get("caption_text"), _sidecar_text(root, r)) for r in records), vocab)
    findings: list[Finding] = []
    trigger = trigger or _read_trigger(root)
    if trigger is None:
        trigger = infer_trigger(entries)
        if trigger is not None:
            findings.append(Finding("trigger.inferred", "info", None,
                                    f"no trigger in dataset.json; using '{trigger}', the first phrase of most captions",
                                    "pass --trigger if that is wrong"))
    findings += run_text_rules(entries, vocab, trigger=trigger, budget=_token_budget(tokenizer_dir))
    keep, paths, missing = _locate_images(root, records)
    findings += missing
    ids = [records[i]["id"] for i in keep]
    evidences = []
    if pixel and paths:
        evidences.append(pixel_detector.detect(paths, ids, vocab, progress=progress))
    tag_ev = tagger.detect([records[i] for i in keep], vocab)
    if tag_ev is not None:
        evidences.append(tag_ev)
    if model and paths:
        from lorastudio.audit.detectors import clip

        evidences.append(clip.detect(root, paths, ids, vocab, model, progress=progress))
    mentions = [entries[i].mentions for i in keep]
    rows = contamination_table(vocab, ids, mentions, evidences, min_present=min_present)
    findings += contamination_findings(rows)
    findings += [Finding("detector.note", "info", None, note, "") for ev in evidences for note in ev.notes]
    facts = {"images": len(records), "trigger": trigger, "packs": list(vocab.packs), "family": family,
             "detectors": [ev.source for ev in evidences], "min_present": min_present}
    return AuditResult(root, sort_findings(findings), rows, facts)
