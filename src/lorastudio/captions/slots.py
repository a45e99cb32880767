"""The five-slot caption model, its composer (golden order) and a parser for free text.

Golden order: trigger, subject, shot (3), objective (4), style (5). The parser places each
comma-separated phrase with the vocabulary; a phrase it cannot place is kept in `unplaced`
(flagged, never dropped). The composer writes unplaced phrases after the objective slot, so
`compose(parse(compose(parse(x)))) == compose(parse(x))` for every text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lorastudio.captions.vocab import Vocabulary

LIST_SLOTS = ("shot", "objective", "style")
SLOT_BY_NUMBER = {3: "shot", 4: "objective", 5: "style"}
SUBJECT_PREFIXES = ("a photo of ", "photo of ", "an image of ", "a picture of ", "a close-up photo of ")

# Commas, newlines, semicolons and kohya's keep-tokens separator all end a phrase.
_SPLIT = re.compile(r"\s*(?:,|;|\n|\|\|\|)\s*")
_TRIGGER_LIKE = re.compile(r"^[^\s,]*[_\d][^\s,]*$")


@dataclass
class Caption:
    """A caption as five slots plus the phrases the parser could not place."""

    trigger: str | None = None
    subject: str | None = None
    shot: list[str] = field(default_factory=list)
    objective: list[str] = field(default_factory=list)
    style: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the manifest's `caption` field)."""
        return {
            "trigger": self.trigger,
            "subject": self.subject,
            "shot": list(self.shot),
            "objective": list(self.objective),
            "style": list(self.style),
            "unplaced": list(self.unplaced),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Caption":
        """Inverse of `to_dict`; missing keys are empty, unknown keys are an error."""
        d = dict(d or {})
        unknown = set(d) - {"trigger", "subject", *LIST_SLOTS, "unplaced"}
        if unknown:
            raise ValueError(f"caption has unknown slot(s): {', '.join(sorted(unknown))}")
        lists = {}
        for name in (*LIST_SLOTS, "unplaced"):
            value = d.get(name) or []
            if isinstance(value, str):
                value = split_phrases(value)
            lists[name] = [str(v) for v in value]
        return cls(trigger=d.get("trigger") or None, subject=d.get("subject") or None, **lists)

    def phrases(self) -> list[tuple[str, str]]:
        """Every (slot, phrase) in golden order, unplaced after objective."""
        out: list[tuple[str, str]] = []
        if self.trigger:
            out.append(("trigger", self.trigger))
        if self.subject:
            out.append(("subject", self.subject))
        for name in ("shot", "objective", "unplaced", "style"):
            out.extend((name, p) for p in getattr(self, name))
        return out

    def copy(self) -> "Caption":
        """A deep copy (lists are not shared)."""
        return Caption.from_dict(self.to_dict())


def split_phrases(text: str) -> list[str]:
    """Split caption text into trimmed phrases; empty pieces and trailing periods go."""
    out = []
    for piece in _SPLIT.split(text or ""):
        piece = " ".join(piece.split()).rstrip(".").strip()
        if piece:
            out.append(piece)
    return out


def compose(caption: Caption) -> str:
    """The caption text in golden order, phrases separated by ', '."""
    return ", ".join(phrase for _, phrase in caption.phrases())


def subject_phrase(subject: str, template: str = "a photo of {}") -> str:
    """Turn a bare subject ('yangnyeom chicken') into the slot-2 phrase ('a photo of ...')."""
    subject = " ".join(subject.split()).strip(" ,")
    if not subject:
        return subject
    if subject.lower().startswith(SUBJECT_PREFIXES):
        return subject
    return template.format(subject)


def _looks_like_subject(phrase: str) -> bool:
    return phrase.lower().startswith(SUBJECT_PREFIXES)


def _looks_like_trigger(phrases: list[str], vocab: "Vocabulary | None") -> bool:
    """A first phrase that is one unknown word holding '_' or a digit ('ohwx_kfood'), or one
    unknown word right before an 'a photo of ...' subject ('ohwx, a photo of ...')."""
    first = phrases[0]
    if " " in first or (vocab is not None and vocab.match(first)):
        return False
    if _TRIGGER_LIKE.match(first):
        return True
    return len(phrases) > 1 and _looks_like_subject(phrases[1])


def parse(text: str, vocab: "Vocabulary | None" = None, trigger: str | None = None) -> Caption:
    """Turn free caption text into slots.

    - trigger: `trigger` wherever it appears (moved first); without one, a first phrase that
      looks like a token (see `_looks_like_trigger`).
    - subject: a phrase starting 'a photo of ...', else the first phrase after the trigger
      when the vocabulary cannot place it.
    - every other phrase goes to the slot of the attribute it names; the rest to `unplaced`.
    Duplicate phrases (after normalising) are kept once.
    """
    from lorastudio.captions.vocab import normalise

    phrases = split_phrases(text)
    cap = Caption()
    seen: set[str] = set()
    if trigger:
        kept = [p for p in phrases if p.lower() != trigger.lower()]
        if len(kept) != len(phrases):
            cap.trigger = trigger
        phrases = kept
    elif phrases and _looks_like_trigger(phrases, vocab):
        cap.trigger = phrases.pop(0)
    for index, phrase in enumerate(phrases):
        key = normalise(phrase) or phrase.lower()
        if key in seen:
            continue
        seen.add(key)
        attr = vocab.match(phrase) if vocab is not None else None
        if attr is not None:
            getattr(cap, SLOT_BY_NUMBER[attr.slot]).append(phrase)
        elif cap.subject is None and (_looks_like_subject(phrase) or index == 0):
            cap.subject = phrase
        else:
            cap.unplaced.append(phrase)
    return cap


def caption_from_slots(slots: dict[str, Any]) -> Caption:
    """Build a Caption from a backend's partial slots dict (strings or lists per slot)."""
    cap = Caption()
    subject = slots.get("subject")
    cap.subject = " ".join(str(subject).split()) or None if subject else None
    for name in (*LIST_SLOTS, "unplaced"):
        value = slots.get(name) or []
        items = split_phrases(value) if isinstance(value, str) else [str(v).strip() for v in value if str(v).strip()]
        getattr(cap, name).extend(items)
    return cap


def add_phrase(caption: Caption, phrase: str, slot: str) -> bool:
    """Append `phrase` to a list slot unless an equal phrase is already anywhere; True if added."""
    from lorastudio.captions.vocab import normalise

    if slot not in (*LIST_SLOTS, "unplaced"):
        raise ValueError(f"slot must be one of {', '.join(LIST_SLOTS)} (got '{slot}')")
    key = normalise(phrase)
    if any(normalise(p) == key for _, p in caption.phrases()):
        return False
    getattr(caption, slot).append(phrase)
    return True
