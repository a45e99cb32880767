"""Korean food glossary: Hangul dish, ingredient and garnish names to romanized English.

CLIP text encoders split Hangul into meaningless byte tokens, so captions, subjects and
folder / file names are translated to `romanized (gloss)` before they reach a caption.
Hangul with no entry stays in place and is reported, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

GLOSSARY_FILE = Path(__file__).parent / "glossary.yaml"

# Hangul syllables plus the compatibility and conjoining jamo blocks.
HANGUL_RUN = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]+")


@dataclass(frozen=True)
class GlossaryEntry:
    """One glossary row: Hangul, its romanization and a short English gloss."""

    hangul: str
    romanized: str
    gloss: str
    category: str = ""

    @property
    def english(self) -> str:
        """The caption form: 'romanized (gloss)', or just the romanized word for loanwords."""
        if not self.gloss or self.gloss == self.romanized:
            return self.romanized
        return f"{self.romanized} ({self.gloss})"


@lru_cache(maxsize=1)
def entries() -> dict[str, GlossaryEntry]:
    """All shipped entries keyed by Hangul (read once)."""
    data = yaml.safe_load(GLOSSARY_FILE.read_text(encoding="utf-8")) or {}
    out: dict[str, GlossaryEntry] = {}
    for category, rows in data.items():
        for hangul, value in (rows or {}).items():
            if not (isinstance(value, list) and len(value) == 2):
                raise ValueError(f"{GLOSSARY_FILE}: {category}.{hangul}: expected [romanized, gloss]")
            if hangul in out:
                raise ValueError(f"{GLOSSARY_FILE}: {category}.{hangul}: duplicate entry")
            out[hangul] = GlossaryEntry(hangul, str(value[0]), str(value[1] or ""), category)
    return out


def contains_hangul(text: str) -> bool:
    """True when `text` holds any Hangul syllable or jamo."""
    return bool(HANGUL_RUN.search(text or ""))


def lookup(hangul: str) -> GlossaryEntry | None:
    """The entry for an exact Hangul word, or None."""
    return entries().get(hangul.strip())


def _segment(run: str) -> tuple[list[str], list[str]]:
    """Split one Hangul run into translated pieces and unmapped leftovers.

    The whole run wins; otherwise the longest entry starting at each position, where
    one-syllable entries (e.g. 김, 떡) only count as a whole run because inside compounds they
    are usually part of a word we do not know.
    """
    table = entries()
    if run in table:
        return [table[run].english], []
    longest = max((len(k) for k in table), default=0)
    pieces: list[str] = []
    unmapped: list[str] = []
    pending = ""
    i = 0
    while i < len(run):
        hit = next((run[i:j] for j in range(min(len(run), i + longest), i + 1, -1) if run[i:j] in table), None)
        if hit is None:
            pending += run[i]
            i += 1
            continue
        if pending:
            pieces.append(pending)
            unmapped.append(pending)
            pending = ""
        pieces.append(table[hit].english)
        i += len(hit)
    if pending:
        pieces.append(pending)
        unmapped.append(pending)
    return pieces, unmapped


def translate(text: str) -> tuple[str, list[str]]:
    """Replace known Hangul words with 'romanized (gloss)'; return (text, unmapped Hangul)."""
    unmapped: list[str] = []

    def _replace(match: re.Match[str]) -> str:
        pieces, missing = _segment(match.group(0))
        unmapped.extend(missing)
        return " ".join(pieces)

    return HANGUL_RUN.sub(_replace, text or ""), unmapped


def name_to_subject(name: str) -> str:
    """A folder or file name as subject text: '10_양념치킨_03' -> '양념치킨' (untranslated).

    Drops a kohya repeat prefix ('10_'), trailing counters and separators, so
    `translate(name_to_subject(...))` gives the subject phrase.
    """
    stem = Path(name).stem if Path(name).suffix.lower() in {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic"} else name
    stem = re.sub(r"^\d+_", "", stem)
    words = re.split(r"[_\-\s.]+", stem)
    # Counters and camera numbering ("03", "IMG", "DSC0012") are not subject words.
    keep = [w for w in words if w and not re.fullmatch(r"(?:img|dsc|dscn|photo|pic)?\d*", w, re.IGNORECASE)]
    return " ".join(keep)
