"""Caption checks the gallery badges and the editor show: token counts, lint, glossary suggestions.

Token counts come from the served base model's own tokenizer folders (one per text encoder),
loaded once per process; the budget is the 75 usable CLIP tokens.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from lorastudio.captions.glossary import contains_hangul, translate
from lorastudio.captions.tokens import CLIP_USABLE_TOKENS, count_tokens, find_tokenizer_dirs, load_tokenizers


class _FastTokenizer:
    """A `tokenizer.json` read with the `tokenizers` library: the same ids as transformers' fast
    tokenizer, without importing transformers (and torch) into the API process."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.no_padding()  # count what the text needs, not the padded / cut model input
        self.tokenizer.no_truncation()

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)


@lru_cache(maxsize=4)
def tokenizers_for(model_dir: str) -> tuple:
    """(name, counter) per text encoder of the model; none when the folder has no tokenizer."""
    if not model_dir:
        return ()
    try:
        found = find_tokenizer_dirs(model_dir)
    except FileNotFoundError:
        return ()
    if all((folder / "tokenizer.json").is_file() for _, folder in found):
        return tuple((name, _FastTokenizer(folder / "tokenizer.json").count) for name, folder in found)
    return tuple((name, lambda text, tok=tok: count_tokens(tok, text)) for name, tok in load_tokenizers(model_dir))


def token_counts(model_dir: str, text: str) -> dict[str, int]:
    """Tokens per text encoder for `text` (special tokens excluded)."""
    return {name: count(text) for name, count in tokenizers_for(model_dir)}


def lint(text: str, slots: dict[str, str] | None, trigger: str | None, counts: dict[str, int]) -> list[dict[str, str]]:
    """Problems with one caption: missing trigger, Hangul, over budget, empty subject, unplaced phrases."""
    out = []
    if not text.strip():
        return [{"code": "uncaptioned", "message": "no caption yet"}]
    if trigger and trigger not in text:
        out.append({"code": "no_trigger", "message": f"the trigger '{trigger}' is missing"})
    elif trigger and not text.startswith(trigger):
        out.append({"code": "slot_order", "message": "the trigger should come first (golden order)"})
    if contains_hangul(text):
        out.append({"code": "hangul", "message": "Hangul splits into meaningless tokens for CLIP; use the glossary"})
    over = {name: n for name, n in counts.items() if n > CLIP_USABLE_TOKENS}
    if over:
        out.append({"code": "over_budget",
                    "message": ", ".join(f"{name}: {n} tokens > {CLIP_USABLE_TOKENS}" for name, n in over.items())})
    if slots is not None and not slots.get("subject"):
        out.append({"code": "no_subject", "message": "the subject slot is empty"})
    if slots is not None and slots.get("unplaced"):
        out.append({"code": "unplaced", "message": "some phrases have no slot yet"})
    return out


def glossary_suggestions(slots: dict[str, str]) -> list[dict[str, Any]]:
    """Per slot holding Hangul: the glossary translation and the words it has no entry for."""
    out = []
    for name, value in slots.items():
        if value and contains_hangul(value):
            suggestion, unmapped = translate(value)
            out.append({"slot": name, "text": value, "suggestion": suggestion, "unmapped": unmapped})
    return out


def check(model_dir: str, text: str, slots: dict[str, str] | None, trigger: str | None) -> dict[str, Any]:
    """Everything the editor shows beside a caption."""
    counts = token_counts(model_dir, text)
    return {"tokens": counts, "budget": CLIP_USABLE_TOKENS, "lint": lint(text, slots, trigger, counts),
            "glossary": glossary_suggestions(slots or {})}
