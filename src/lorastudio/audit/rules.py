"""Text rules: pure checks on caption text that need no image and no model.

Each rule reads the parsed captions (`CaptionEntry`) and yields `Finding`s with a rule id,
a severity, the image it concerns (None for dataset-level findings), a message and a
suggested fix. Everything is one pass over the captions, so the cost grows linearly.
"""

from __future__ import annotations

import contextlib
import gc
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lorastudio.captions.slots import SUBJECT_PREFIXES, compose, parse, split_phrases
from lorastudio.captions.vocab import Vocabulary, normalise

SEVERITIES = ("error", "warning", "info")
STYLE_CONSTANT_SHARE = 0.9
IDENTICAL_MIN_GROUP = 3
LIGHTING_GROUP_PREFIX = "lighting"
ORDINARY_PHRASES = ("neutral lighting", "flat lighting", "neutral white balance")
_SQUASH = re.compile(r"[^0-9a-z]+")
_TOKENIZE_CHUNK = 4096  # captions per tokenizer call: bounded memory on 100k-caption datasets


@contextlib.contextmanager
def _no_cycle_collector() -> Iterator[None]:
    """Pause Python's cycle collector while the rules build many small acyclic objects.

    Its full collections walk every live object, and a pass over n captions triggers a number
    of them that grows with n, so the audit grew faster than linearly (10k -> 100k captions:
    14x). Nothing built here forms a reference cycle; reference counting frees it all.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class Finding:
    """One problem: which rule, how bad, which image (None = the whole dataset), what to do."""

    rule: str
    severity: str
    image: str | None
    message: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first: errors, then warnings, then info; dataset-level before per-image."""
    return sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), f.image is not None, f.rule, f.image or ""))


@dataclass
class CaptionEntry:
    """One record's caption as the rules see it, parsed once."""

    id: str
    text: str
    sidecar: str | None
    phrases: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    attrs: list[list[str]] = field(default_factory=list)  # attribute ids per phrase
    mentions: set[str] = field(default_factory=set)


@_no_cycle_collector()
def build_entries(items: Iterable[tuple[str, str | None, str | None]], vocab: Vocabulary) -> list[CaptionEntry]:
    """Parse (id, caption_text, sidecar_text or None) triples with the vocabulary."""
    out = []
    for rid, text, sidecar in items:
        entry = CaptionEntry(rid, (text or "").strip(), sidecar)
        entry.phrases = split_phrases(entry.text)
        entry.keys = [normalise(p) or p.lower() for p in entry.phrases]
        for phrase in entry.phrases:
            whole = vocab.match(phrase)
            ids = [whole.id] if whole is not None else sorted(vocab.mentions(phrase))
            entry.attrs.append(ids)
            entry.mentions.update(ids)
        out.append(entry)
    return out


def squash(text: str) -> str:
    """Lower-case letters and digits only: 'OHWX kfood-style' -> 'ohwxkfoodstyle'."""
    return _SQUASH.sub("", text.lower())


def infer_trigger(entries: Sequence[CaptionEntry]) -> str | None:
    """The first phrase of at least half the captions when it looks like a token (has '_' or a digit)."""
    firsts = Counter(e.phrases[0] for e in entries if e.phrases)
    if not firsts:
        return None
    phrase, count = firsts.most_common(1)[0]
    looks_like_token = " " not in phrase and any(ch == "_" or ch.isdigit() for ch in phrase)
    return phrase if looks_like_token and count * 2 >= len(entries) else None


def check_presence(entries: Sequence[CaptionEntry]) -> list[Finding]:
    """Empty captions, missing sidecars and sidecars that disagree with the manifest."""
    out = []
    for e in entries:
        if not e.text:
            out.append(Finding("caption.empty", "error", e.id, "the image has no caption",
                               "caption it (`lorastudio caption`) or reject the image"))
        elif e.sidecar is None:
            out.append(Finding("sidecar.missing", "error", e.id, "the caption sidecar .txt is missing",
                               "re-run `lorastudio caption` or `lorastudio audit --fix --yes` to rewrite sidecars"))
        elif e.sidecar.strip() != e.text:
            out.append(Finding("sidecar.stale", "warning", e.id, "the sidecar .txt differs from the manifest caption",
                               "rewrite sidecars from the manifest (`lorastudio audit --fix --yes`)"))
    return out


def check_trigger(entries: Sequence[CaptionEntry], trigger: str | None) -> list[Finding]:
    """Missing trigger, trigger not first, and other spellings of the trigger."""
    if not trigger:
        return [Finding("trigger.unknown", "info", None, "no trigger word is known for this dataset; trigger rules skipped",
                        "set it with `lorastudio caption --trigger` (stored in dataset.json) or pass --trigger")]
    out = []
    key = squash(trigger)
    spellings: Counter[str] = Counter()
    for e in entries:
        if not e.text:
            continue
        exact = [i for i, p in enumerate(e.phrases) if p == trigger]
        variants = [p for p in e.phrases if p != trigger and squash(p).startswith(key)]
        spellings.update(variants)
        if not exact and not variants:
            out.append(Finding("trigger.missing", "error", e.id, f"the caption does not contain the trigger '{trigger}'",
                               f"put '{trigger}' first in the caption"))
        elif exact and exact[0] != 0:
            out.append(Finding("trigger.not_first", "warning", e.id, f"the trigger '{trigger}' is not the first phrase",
                               f"move '{trigger}' to the front (golden order: trigger first)"))
        for v in variants:
            out.append(Finding("trigger.spelling", "warning", e.id,
                               f"'{v}' looks like another spelling of the trigger '{trigger}'",
                               f"write it exactly as '{trigger}'; each spelling tokenizes differently"))
    return out


def _slot_of(phrase: str, ids: list[str], vocab: Vocabulary, trigger: str | None) -> int | None:
    if trigger and phrase == trigger:
        return 1
    if phrase.lower().startswith(SUBJECT_PREFIXES):
        return 2
    if len(ids) == 1 and vocab.match(phrase) is not None:
        return vocab.by_id(ids[0]).slot
    return None


def check_order(entries: Sequence[CaptionEntry], vocab: Vocabulary, trigger: str | None) -> list[Finding]:
    """Phrases out of the golden order: trigger, subject, shot (3), objective (4), style (5).

    Lighting may sit in slot 4 (ordinary light, described) or 5 (light that is the style),
    so a lighting phrase never breaks the order between those two.
    """
    out = []
    for e in entries:
        highest, bad = 0, None
        for phrase, ids in zip(e.phrases, e.attrs):
            slot = _slot_of(phrase, ids, vocab, trigger)
            if slot is None:
                continue
            if slot == 5 and vocab.by_id(ids[0]).group.startswith(LIGHTING_GROUP_PREFIX):
                slot = max(4, min(5, highest))
            if slot < highest:
                bad = phrase
                break
            highest = slot
        if bad is not None:
            fixed = compose(parse(e.text, vocab, trigger))
            out.append(Finding("slots.order", "warning", e.id, f"'{bad}' comes after a later slot (golden order broken)",
                               f"reorder: {fixed}"))
    return out


def _non_latin_letters(text: str) -> list[str]:
    return [ch for ch in text if ord(ch) > 0x24F and unicodedata.category(ch).startswith("L")]


def check_script(entries: Sequence[CaptionEntry]) -> list[Finding]:
    """Hangul or other non-Latin text: CLIP text encoders read English only."""
    from lorastudio.captions.glossary import contains_hangul, translate

    out = []
    for e in entries:
        if not _non_latin_letters(e.text):
            continue
        if contains_hangul(e.text):
            fixed, unmapped = translate(e.text)
            hint = f"write it romanized with a gloss: {fixed}"
            if unmapped:
                hint += f" (no glossary entry for: {', '.join(unmapped)}; add a romanization by hand)"
            out.append(Finding("text.hangul", "warning", e.id,
                               "the caption holds Hangul, which CLIP splits into meaningless byte tokens", hint))
        else:
            sample = "".join(_non_latin_letters(e.text)[:8])
            out.append(Finding("text.non_latin", "warning", e.id,
                               f"the caption holds non-Latin text ('{sample}') that the text encoder cannot read",
                               "write it in English (romanize names, add a short gloss)"))
    return out


def check_phrases(entries: Sequence[CaptionEntry], vocab: Vocabulary) -> list[Finding]:
    """The same phrase (or attribute) twice, and contradictory phrases from one exclusive group."""
    out = []
    for e in entries:
        seen: dict[str, str] = {}
        for phrase, key in zip(e.phrases, e.keys):
            if key in seen:
                out.append(Finding("phrase.duplicate", "warning", e.id, f"'{phrase}' appears twice",
                                   f"keep one '{seen[key]}'"))
            seen.setdefault(key, phrase)
        per_attr: dict[str, list[str]] = defaultdict(list)
        for phrase, ids, key in zip(e.phrases, e.attrs, e.keys):
            for attr_id in ids:
                per_attr[attr_id].append(key)
        for attr_id, keys in per_attr.items():
            if len(set(keys)) > 1:
                out.append(Finding("phrase.duplicate", "warning", e.id,
                                   f"{' / '.join(sorted(set(keys)))} all name {attr_id}",
                                   f"keep one: '{vocab.by_id(attr_id).phrase}'"))
        by_group: dict[str, set[str]] = defaultdict(set)
        for attr_id in e.mentions:
            attr = vocab.by_id(attr_id)
            if attr.exclusive:
                by_group[attr.group].add(attr_id)
        for group, ids in sorted(by_group.items()):
            if len(ids) > 1:
                names = ", ".join(f"'{vocab.by_id(i).phrase}'" for i in sorted(ids))
                out.append(Finding("phrase.contradiction", "warning", e.id,
                                   f"{names} contradict each other (one {group} at a time)",
                                   "keep the one the image shows"))
    return out


def check_dataset(entries: Sequence[CaptionEntry], vocab: Vocabulary) -> list[Finding]:
    """Dataset-level text rules: identical captions, lighting never described, style constants."""
    captioned = [e for e in entries if e.text]
    out: list[Finding] = []
    if not captioned:
        return out
    groups: dict[str, list[str]] = defaultdict(list)
    for e in captioned:
        groups[" | ".join(e.keys)].append(e.id)
    min_group = min(IDENTICAL_MIN_GROUP, len(captioned)) if len(captioned) > 1 else 2
    for ids in groups.values():
        if len(ids) >= min_group:
            shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
            out.append(Finding("captions.identical", "warning", ids[0],
                               f"{len(ids)} images share the same caption ({shown})",
                               "describe what differs between them (angle, vessel, garnish, background)"))
    lighting = {a.id for a in vocab.attributes if a.group.startswith(LIGHTING_GROUP_PREFIX)}
    if lighting and not any(e.mentions & lighting for e in captioned):
        neutral = vocab.match("neutral lighting")
        phrase = neutral.phrase if neutral else "neutral lighting"
        out.append(Finding("lighting.missing", "warning", None, "no caption describes the lighting, so the trigger "
                           "will absorb whatever light the photos have",
                           f"add '{phrase}' (or the light you see) to the captions"))
    counts = Counter(a for e in captioned for a in e.mentions)
    # The plain descriptors the rules themselves recommend are not a look.
    plain = {a.id for a in (vocab.match(p) for p in ORDINARY_PHRASES) if a is not None}
    for attr_id, count in sorted(counts.items()):
        attr = vocab.by_id(attr_id)
        if attr_id in plain:
            continue
        share = count / len(captioned)
        if attr.kind == "subjective" and share >= STYLE_CONSTANT_SHARE and len(captioned) >= 3:
            out.append(Finding("style.constant", "info", None,
                               f"'{attr.phrase}' is in {count}/{len(captioned)} captions ({share:.0%}): a style constant. "
                               "Naming it everywhere may pull that look away from the trigger",
                               f"your choice: keep '{attr.phrase}' if it is not the style you teach; "
                               "drop it if it is part of the look the trigger should own"))
    return out


@dataclass
class TokenBudget:
    """Tokenizers to count with; `approximate` when they are not the base model's own."""

    tokenizers: list[tuple[str, Any]]
    approximate: bool
    source: str


def check_tokens(entries: Sequence[CaptionEntry], budget: TokenBudget | None) -> list[Finding]:
    """Captions over the text encoder's 75 usable tokens (or an info note when not counted)."""
    if budget is None:
        return [Finding("tokens.skipped", "info", None, "token counts were not checked (no tokenizer available)",
                        "pass --tokenizer with the base model's folder")]
    from lorastudio.captions.tokens import usable_tokens

    out = []
    if budget.approximate:
        out.append(Finding("tokens.approximate", "info", None,
                           f"token counts use {budget.source}, an approximation of the base model's tokenizer",
                           "pass --tokenizer MODEL_DIR for exact counts"))
    texts = [e for e in entries if e.text]
    for name, tok in budget.tokenizers:
        limit = usable_tokens(tok)
        # verbose=False: over-long captions are what we look for, not a tokenizer warning.
        ids = [row for start in range(0, len(texts), _TOKENIZE_CHUNK)
               for row in tok([e.text for e in texts[start:start + _TOKENIZE_CHUNK]],
                              add_special_tokens=False, verbose=False)["input_ids"]]
        for e, tokens in zip(texts, ids):
            if len(tokens) <= limit:
                continue
            about = "about " if budget.approximate else ""
            out.append(Finding("tokens.over_budget", "info" if budget.approximate else "warning", e.id,
                               f"{about}{len(tokens)} tokens for {name} (limit {limit}); the rest is cut in training",
                               "shorten it: drop quality tags and repeated words first"))
    return out


@_no_cycle_collector()
def run_text_rules(entries: Sequence[CaptionEntry], vocab: Vocabulary, *, trigger: str | None,
                   budget: TokenBudget | None) -> list[Finding]:
    """Every text rule over the parsed captions."""
    findings = check_presence(entries)
    findings += check_trigger(entries, trigger)
    findings += check_order(entries, vocab, trigger)
    findings += check_script(entries)
    findings += check_phrases(entries, vocab)
    findings += check_dataset(entries, vocab)
    findings += check_tokens(entries, budget)
    return findings
