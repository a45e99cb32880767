"""Token budget: how each caption and the trigger tokenize with the base model's tokenizers.

CLIP reads 77 tokens including start and end, so 75 are usable; most trainers cut the rest
silently. The report uses the model's own tokenizer folders (`tokenizer/`, `tokenizer_2/`
for SDXL), because a trigger that is one token for one vocabulary is six for another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLIP_USABLE_TOKENS = 75
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json", "spiece.model")


class TokenizerNotFound(FileNotFoundError):
    """The given folder holds no tokenizer; the message says what was looked for."""


def find_tokenizer_dirs(path: Path | str) -> list[tuple[str, Path]]:
    """(name, folder) per text encoder: a model folder's tokenizer*/ or a tokenizer folder itself."""
    path = Path(path)
    if not path.is_dir():
        raise TokenizerNotFound(f"tokenizer folder {path} not found")
    subdirs = sorted(p for p in path.glob("tokenizer*") if p.is_dir())
    if subdirs:
        return [(p.name, p) for p in subdirs]
    if any((path / name).is_file() for name in _TOKENIZER_FILES):
        return [(path.name, path)]
    raise TokenizerNotFound(
        f"{path} holds no tokenizer: expected tokenizer/ (and tokenizer_2/) subfolders "
        f"or one of {', '.join(_TOKENIZER_FILES)}"
    )


def load_tokenizers(path: Path | str) -> list[tuple[str, Any]]:
    """Load every tokenizer found by `find_tokenizer_dirs`, locally only."""
    from transformers import AutoTokenizer

    out = []
    for name, folder in find_tokenizer_dirs(path):
        out.append((name, AutoTokenizer.from_pretrained(str(folder), local_files_only=True)))
    return out


def usable_tokens(tokenizer: Any) -> int:
    """Tokens left for text: the model's max length minus start and end (75 for CLIP)."""
    max_len = getattr(tokenizer, "model_max_length", None)
    if not isinstance(max_len, int) or max_len > 100_000:
        return CLIP_USABLE_TOKENS
    return max_len - 2


def count_tokens(tokenizer: Any, text: str) -> int:
    """Number of tokens for `text`, special tokens excluded."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass
class TokenReport:
    """Per-record token counts per text encoder, the captions over budget and the trigger split."""

    limits: dict[str, int]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    over: list[tuple[str, str, int]] = field(default_factory=list)
    trigger: str | None = None
    trigger_tokens: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "limits": self.limits,
            "counts": self.counts,
            "over": [{"id": i, "tokenizer": n, "tokens": c} for i, n, c in self.over],
            "trigger": self.trigger,
            "trigger_tokens": self.trigger_tokens,
        }


def token_report(records: list[dict[str, Any]], tokenizers: list[tuple[str, Any]],
                 trigger: str | None = None) -> TokenReport:
    """Count tokens for every captioned record with every tokenizer."""
    report = TokenReport(limits={name: usable_tokens(tok) for name, tok in tokenizers}, trigger=trigger)
    for record in records:
        text = record.get("caption_text")
        if not text:
            continue
        per = {name: count_tokens(tok, text) for name, tok in tokenizers}
        report.counts[record["id"]] = per
        for name, n in per.items():
            if n > report.limits[name]:
                report.over.append((record["id"], name, n))
    if trigger:
        report.trigger_tokens = {name: list(tok.tokenize(trigger)) for name, tok in tokenizers}
    return report
