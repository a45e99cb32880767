"""Attribute vocabulary packs: the phrases captions use and the audit probes for.

A pack is a YAML file (schema `PackSpec`) that adds groups of attributes and may extend a
parent pack. Shipped packs live beside this module in `packs/` and form the chain
`core.photo` -> `food` -> `food.korean`; user packs are given by path. Caption phrases are
matched after `normalise()`, so "on a white platter" and "White platter" are the same key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from lorastudio.config.loader import ConfigError, Schema, format_validation_error, read_yaml

PACKS_DIR = Path(__file__).parent / "packs"
DEFAULT_MIN_PRESENT = 0.6

# Leading words that carry no attribute meaning: "on a white plate" == "white plate".
_LEADING_STOPWORDS = {"a", "an", "the", "on", "in", "with", "of", "at", "and", "some", "over"}
_NON_WORD = re.compile(r"[^0-9a-z\u00c0-\u024f\uac00-\ud7a3']+")


class VocabularyError(ValueError):
    """A pack file is missing or malformed; the message names the file and the key."""


class AttributeSpec(Schema):
    """One attribute inside a group, as written in a pack file."""

    id: str = Field(description="stable key, e.g. bg.black")
    phrase: str = Field(description="canonical caption text, e.g. 'black background'")
    synonyms: list[str] = Field(default_factory=list, description="other caption wordings that mean this attribute")
    prompts: list[str] = Field(default_factory=list, description="CLIP prompts; '{phrase}' is replaced; default: the group's")
    tagger_aliases: list[str] = Field(default_factory=list, description="WD tagger tag names for this attribute")
    min_present: float | None = Field(default=None, ge=0.0, le=1.0, description="contamination threshold; default: the group's")


class GroupSpec(Schema):
    """A group of attributes; slot and kind are required when a pack introduces the group."""

    slot: Literal[3, 4, 5] | None = Field(default=None, description="golden-order slot: 3 shot, 4 objective, 5 style")
    kind: Literal["objective", "subjective"] | None = Field(default=None, description="objective or subjective")
    exclusive: bool | None = Field(default=None, description="true when at most one attribute of the group applies")
    prompts: list[str] = Field(default_factory=list, description="default CLIP prompt templates with '{phrase}'")
    min_present: float | None = Field(default=None, ge=0.0, le=1.0, description="default contamination threshold")
    attributes: list[AttributeSpec] = Field(default_factory=list, description="the attributes of the group")


class OverrideSpec(Schema):
    """Changes a child pack makes to an attribute inherited from a parent pack."""

    min_present: float | None = Field(default=None, ge=0.0, le=1.0, description="new contamination threshold")
    prompts: list[str] | None = Field(default=None, description="replacement CLIP prompts")
    synonyms: list[str] = Field(default_factory=list, description="extra synonyms")
    tagger_aliases: list[str] = Field(default_factory=list, description="extra tagger aliases")


class PackSpec(Schema):
    """A vocabulary pack file."""

    name: str = Field(description="pack name, e.g. food.korean")
    extends: str | None = Field(default=None, description="parent pack: a shipped name or a path")
    description: str = Field(default="", description="what the pack covers")
    groups: dict[str, GroupSpec] = Field(default_factory=dict, description="group name -> group")
    overrides: dict[str, OverrideSpec] = Field(default_factory=dict, description="attribute id -> changes")


@dataclass(frozen=True)
class Attribute:
    """One attribute a caption can name and a probe can detect."""

    id: str
    group: str
    exclusive: bool
    slot: int
    kind: str
    phrase: str
    synonyms: tuple[str, ...] = ()
    prompts: tuple[str, ...] = ()
    tagger_aliases: tuple[str, ...] = ()
    min_present: float = DEFAULT_MIN_PRESENT


def normalise(phrase: str) -> str:
    """Lower-case, turn punctuation and underscores into spaces, drop leading articles."""
    words = _NON_WORD.sub(" ", phrase.lower().replace("_", " ")).split()
    while len(words) > 1 and words[0] in _LEADING_STOPWORDS:
        words.pop(0)
    return " ".join(words)


def normalise_tag(tag: str) -> str:
    """Tagger tags compare lower-case with underscores: 'Black Background' -> 'black_background'."""
    return "_".join(tag.strip().lower().split())


class Vocabulary:
    """The attributes of one or more packs, with phrase, synonym and tag lookups."""

    def __init__(self, attributes: list[Attribute], packs: Sequence[str] = ()) -> None:
        self.attributes = list(attributes)
        self.packs = tuple(packs)
        self._by_id = {a.id: a for a in self.attributes}
        self._by_key: dict[str, Attribute] = {}
        self._by_tag: dict[str, Attribute] = {}
        for attr in self.attributes:
            for text in (attr.phrase, *attr.synonyms):
                key = normalise(text)
                other = self._by_key.get(key)
                if other is not None and other.id != attr.id:
                    raise VocabularyError(f"phrase '{text}' of {attr.id} already names {other.id}")
                self._by_key[key] = attr
            for tag in attr.tagger_aliases:
                self._by_tag.setdefault(normalise_tag(tag), attr)
        keys = sorted(self._by_key, key=len, reverse=True)
        # Longest keys first so "black bowl" wins over a shorter key inside it.
        self._scan = re.compile(r"\b(" + "|".join(re.escape(k) for k in keys) + r")\b") if keys else None

    def groups(self) -> dict[str, list[Attribute]]:
        """Group name -> its attributes, in pack order."""
        out: dict[str, list[Attribute]] = {}
        for attr in self.attributes:
            out.setdefault(attr.group, []).append(attr)
        return out

    def by_id(self, attr_id: str) -> Attribute:
        """The attribute with this id; KeyError names the id when unknown."""
        try:
            return self._by_id[attr_id]
        except KeyError:
            raise KeyError(f"unknown attribute id '{attr_id}'") from None

    def match(self, phrase: str) -> Attribute | None:
        """The attribute whose canonical phrase or synonym equals `phrase` after normalising."""
        return self._by_key.get(normalise(phrase))

    def by_tag(self, tag: str) -> Attribute | None:
        """The attribute a tagger tag stands for (alias first, then phrase/synonym)."""
        return self._by_tag.get(normalise_tag(tag)) or self.match(tag.replace("_", " "))

    def mentions(self, caption_text: str) -> set[str]:
        """Ids of every attribute a caption names, also inside longer phrases or sentences."""
        if not caption_text or self._scan is None:
            return set()
        from lorastudio.captions.slots import split_phrases

        found: set[str] = set()
        for phrase in split_phrases(caption_text):
            norm = normalise(phrase)
            whole = self._by_key.get(norm)
            if whole is not None:
                found.add(whole.id)
                continue
            found.update(self._by_key[m.group(1)].id for m in self._scan.finditer(norm))
        return found

    def __len__(self) -> int:
        return len(self.attributes)


def _resolve_pack_path(pack: str | Path) -> Path:
    candidate = Path(pack)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise VocabularyError(f"vocabulary pack file {candidate} not found")
        return candidate
    shipped = PACKS_DIR / f"{pack}.yaml"
    if not shipped.is_file():
        names = ", ".join(shipped_packs())
        raise VocabularyError(f"unknown vocabulary pack '{pack}' (shipped: {names}; or give a .yaml path)")
    return shipped


def shipped_packs() -> list[str]:
    """Names of the packs that ship with lorastudio."""
    return sorted(p.name[: -len(".yaml")] for p in PACKS_DIR.glob("*.yaml"))


def read_pack(pack: str | Path) -> tuple[Path, PackSpec]:
    """Read and validate one pack file (no inheritance); errors name the file and key."""
    path = _resolve_pack_path(pack)
    try:
        data = read_yaml(path)
    except ConfigError as exc:
        raise VocabularyError(str(exc)) from None
    try:
        return path, PackSpec.model_validate(data)
    except ValidationError as exc:
        raise VocabularyError(format_validation_error(PackSpec, exc, str(path))) from None


def _pack_chain(pack: str | Path, seen: tuple[str, ...] = ()) -> list[tuple[Path, PackSpec]]:
    """The pack and its ancestors, root first."""
    path, spec = read_pack(pack)
    key = str(path.resolve())
    if key in seen:
        raise VocabularyError(f"{path}: extends: inheritance cycle through '{spec.name}'")
    parent = spec.extends
    if parent is not None and not Path(parent).is_absolute() and parent.endswith((".yaml", ".yml")):
        parent = str(path.parent / parent)  # a relative parent path is relative to the child file
    chain = _pack_chain(parent, (*seen, key)) if parent else []
    return [*chain, (path, spec)]


class _Builder:
    """Accumulates groups and attributes across packs, enforcing unique ids."""

    def __init__(self) -> None:
        self.groups: dict[str, dict] = {}
        self.attrs: dict[str, dict] = {}

    def add_pack(self, path: Path, spec: PackSpec) -> None:
        for gname, group in spec.groups.items():
            base = self.groups.get(gname)
            if base is None:
                for key in ("slot", "kind"):
                    if getattr(group, key) is None:
                        raise VocabularyError(f"{path}: groups.{gname}.{key}: required for a new group")
                base = {"slot": group.slot, "kind": group.kind, "exclusive": bool(group.exclusive),
                        "prompts": list(group.prompts), "min_present": group.min_present or DEFAULT_MIN_PRESENT}
                self.groups[gname] = base
            for idx, attr in enumerate(group.attributes):
                if attr.id in self.attrs:
                    raise VocabularyError(f"{path}: groups.{gname}.attributes.{idx}.id: '{attr.id}' is defined twice")
                self.attrs[attr.id] = {"group": gname, "spec": attr, "source": path}
        for attr_id, change in spec.overrides.items():
            entry = self.attrs.get(attr_id)
            if entry is None:
                raise VocabularyError(f"{path}: overrides.{attr_id}: no such attribute in the parent packs")
            entry.setdefault("overrides", []).append(change)

    def build(self) -> list[Attribute]:
        out = []
        for attr_id, entry in self.attrs.items():
            spec: AttributeSpec = entry["spec"]
            group = self.groups[entry["group"]]
            prompts = list(spec.prompts or group["prompts"] or ["a photo with {phrase}"])
            synonyms, aliases = list(spec.synonyms), list(spec.tagger_aliases)
            min_present = spec.min_present if spec.min_present is not None else group["min_present"]
            for change in entry.get("overrides", []):
                prompts = list(change.prompts) if change.prompts is not None else prompts
                min_present = change.min_present if change.min_present is not None else min_present
                synonyms += change.synonyms
                aliases += change.tagger_aliases
            out.append(Attribute(
                id=attr_id, group=entry["group"], exclusive=group["exclusive"], slot=group["slot"],
                kind=group["kind"], phrase=spec.phrase, synonyms=tuple(synonyms),
                prompts=tuple(p.replace("{phrase}", spec.phrase) for p in prompts),
                tagger_aliases=tuple(aliases), min_present=float(min_present),
            ))
        return out


def load_vocabulary(packs: Sequence[str | Path] = ("food.korean",)) -> Vocabulary:
    """Load packs (shipped names or YAML paths) with their parents, merged in order."""
    if isinstance(packs, (str, Path)):
        packs = (packs,)
    builder = _Builder()
    loaded: set[str] = set()
    names: list[str] = []
    for pack in packs:
        for path, spec in _pack_chain(pack):
            key = str(path.resolve())
            if key in loaded:
                continue
            loaded.add(key)
            names.append(spec.name)
            builder.add_pack(path, spec)
    return Vocabulary(builder.build(), names)
