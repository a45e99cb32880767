"""Vocabulary packs: shipped content, inheritance, lookups, user packs and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorastudio.captions.vocab import VocabularyError, load_vocabulary, normalise, shipped_packs


def test_shipped_packs_chain_and_size(vocab):
    assert shipped_packs() == ["core.photo", "food", "food.korean"]
    assert vocab.packs == ("core.photo", "food", "food.korean")
    assert len(vocab) >= 148
    groups = vocab.groups()
    for name in ("background.color", "background.type", "surface", "vessel", "garnish", "food.state",
                 "props", "shot.size", "angle", "lighting.type", "color.cast", "optics", "quality"):
        assert name in groups, name
    assert all(a.slot in (3, 4, 5) and a.kind in ("objective", "subjective") for a in vocab.attributes)
    assert all(a.prompts and "{phrase}" not in " ".join(a.prompts) for a in vocab.attributes)


def test_core_pack_alone_has_no_food_groups():
    core = load_vocabulary(["core.photo"])
    assert "background.color" not in core.groups()
    assert core.match("close-up") is not None
    assert core.match("black background") is None


def test_korean_pack_adds_to_inherited_groups(vocab):
    dolsot = vocab.by_id("vessel.dolsot")
    assert dolsot.group == "vessel" and dolsot.slot == 4 and not dolsot.exclusive
    assert vocab.match("dolsot") is dolsot
    assert vocab.match("Seaweed strips (gim)").id == "garnish.gim"
    # food.korean overrides the threshold of an inherited attribute
    assert vocab.by_id("bg.black").min_present == 0.5
    assert vocab.by_id("bg.white").min_present == 0.6


def test_match_normalises_articles_case_and_punctuation(vocab):
    assert normalise("On a White  Platter") == "white platter"
    assert vocab.match("on a white platter").id == "vessel.white_plate"
    assert vocab.match("Black_Backdrop").id == "bg.black"
    assert vocab.match("close up").id == "shot.close_up"
    assert vocab.match("fried chicken") is None


def test_by_tag_and_mentions(vocab):
    assert vocab.by_tag("black_background").id == "bg.black"
    assert vocab.by_tag("Simple Background").id == "bgtype.plain"
    assert vocab.by_tag("sesame_seeds").id == "garnish.sesame"
    assert vocab.by_tag("1girl").id == "props.person"
    assert vocab.by_tag("no_such_tag") is None
    text = "ohwx, fried chicken in a black bowl on a dark wooden table, sesame seeds, soft lighting"
    assert vocab.mentions(text) == {"vessel.black_bowl", "surface.dark_wood", "garnish.sesame", "light.soft"}


def test_exclusive_groups_have_clip_prompts(vocab):
    colours = vocab.groups()["background.color"]
    assert all(a.exclusive for a in colours)
    assert vocab.by_id("bg.black").prompts == ("a food photo with a black background",)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_user_pack_by_path_extends_shipped(tmp_path):
    pack = _write(tmp_path / "cafe.yaml", """
name: interior.cafe
extends: food.korean
groups:
  cafe.furniture:
    slot: 4
    kind: objective
    prompts: ["a cafe photo with {phrase}"]
    attributes:
      - id: cafe.sofa
        phrase: velvet sofa
        synonyms: [sofa]
overrides:
  bg.white:
    prompts: ["a cafe photo with a white wall"]
""")
    vocab = load_vocabulary([pack])
    assert vocab.packs[-1] == "interior.cafe"
    sofa = vocab.match("a sofa")
    assert sofa.id == "cafe.sofa" and sofa.prompts == ("a cafe photo with velvet sofa",)
    assert vocab.by_id("bg.white").prompts == ("a cafe photo with a white wall",)
    assert vocab.match("dolsot") is not None


@pytest.mark.parametrize("body, needle", [
    ("name: x\nextends: food\ngroups:\n  g:\n    slot: 4\n    kind: objective\n    attributes:\n"
     "      - id: g.a\n        phrase: thing\n        synonym: [oops]\n", "groups.g.attributes.0.synonym"),
    ("name: x\ngroups:\n  g:\n    kind: objective\n    attributes:\n      - {id: g.a, phrase: thing}\n",
     "groups.g.slot"),
    ("name: x\nextends: food\ngroups:\n  vessel:\n    attributes:\n      - {id: vessel.black_plate, phrase: p}\n",
     "vessel.black_plate"),
    ("name: x\nextends: food\noverrides:\n  bg.nope: {min_present: 0.3}\n", "overrides.bg.nope"),
    ("name: x\ngroups:\n  g:\n    slot: 7\n    kind: objective\n", "groups.g.slot"),
])
def test_user_pack_errors_name_file_and_key(tmp_path, body, needle):
    pack = _write(tmp_path / "bad.yaml", body)
    with pytest.raises(VocabularyError) as info:
        load_vocabulary([pack])
    assert str(pack) in str(info.value)
    assert needle in str(info.value)


def test_unknown_pack_name_lists_shipped():
    with pytest.raises(VocabularyError, match="food.korean"):
        load_vocabulary(["food.japanese"])
