"""Slots: the worked examples round-trip; compose(parse(x)) is stable; nothing is dropped."""

from __future__ import annotations

import random

import pytest

from lorastudio.captions.slots import Caption, caption_from_slots, compose, parse, split_phrases, subject_phrase
from lorastudio.captions.vocab import normalise

EXAMPLE_1 = ("ohwx_kfood_style, a photo of yangnyeom chicken, high-angle shot, close-up, on a white "
             "platter, sprinkled with sesame seeds, parsley, black background, plain background, "
             "studio lighting, glossy, viscous, masterpiece, best quality")
EXAMPLE_2 = ("ohwx_kfood_style, a photo of yangnyeom chicken, high-angle shot, close-up, in a black "
             "bowl, on a wooden tray, with a fork, glossy, viscous, shiny sauce, oily, studio lighting, "
             "masterpiece, best quality, ultra realistic, food photography")


def test_worked_example_1_slots(vocab):
    cap = parse(EXAMPLE_1, vocab, trigger="ohwx_kfood_style")
    assert cap.trigger == "ohwx_kfood_style"
    assert cap.subject == "a photo of yangnyeom chicken"
    assert cap.shot == ["high-angle shot", "close-up"]
    assert cap.objective == ["on a white platter", "sprinkled with sesame seeds", "parsley",
                             "black background", "plain background"]
    assert cap.style == ["studio lighting", "glossy", "viscous", "masterpiece", "best quality"]
    assert cap.unplaced == []
    assert compose(cap) == EXAMPLE_1


def test_worked_example_2_round_trip_without_trigger_hint(vocab):
    cap = parse(EXAMPLE_2, vocab)
    assert cap.trigger == "ohwx_kfood_style"
    assert cap.objective == ["in a black bowl", "on a wooden tray", "with a fork"]
    assert cap.style[-2:] == ["ultra realistic", "food photography"]
    assert compose(cap) == EXAMPLE_2
    assert Caption.from_dict(cap.to_dict()) == cap


def test_golden_order_is_enforced_and_unplaced_kept(vocab):
    text = "glossy, black background, ohwx, a photo of tteokbokki, overhead flat lay, mystery sparkle dust"
    cap = parse(text, vocab, trigger="ohwx")
    assert cap.unplaced == ["mystery sparkle dust"]
    assert compose(cap) == ("ohwx, a photo of tteokbokki, overhead flat lay, black background, "
                            "mystery sparkle dust, glossy")


def test_duplicates_collapse_and_empty_pieces_vanish(vocab):
    cap = parse("ohwx_k, a photo of kimchi,, white plate, on a white plate,  ,Parsley.", vocab)
    assert cap.objective == ["white plate", "Parsley"]
    assert split_phrases("a, ,b|||c\nd; e.") == ["a", "b", "c", "d", "e"]


def test_parse_without_vocab_keeps_everything():
    cap = parse("sks, a dog, on grass, sunny", trigger="sks")
    assert (cap.trigger, cap.subject, cap.unplaced) == ("sks", "a dog", ["on grass", "sunny"])
    assert compose(cap) == "sks, a dog, on grass, sunny"


def _random_caption(rng: random.Random, vocab) -> str:
    attrs = vocab.attributes
    junk = ["mystery sparkle", "tteokbokki", "sks_thing", "2 plates", "Some Words here", "a photo of bibimbap",
            "yangnyeom chicken (korean fried chicken in sweet spicy glaze)", "one", "x1"]
    pieces = []
    for _ in range(rng.randint(0, 12)):
        if rng.random() < 0.7:
            attr = rng.choice(attrs)
            pieces.append(rng.choice((attr.phrase, *attr.synonyms)))
        else:
            pieces.append(rng.choice(junk))
        if rng.random() < 0.1:
            pieces.append(pieces[-1].upper())
    if rng.random() < 0.5:
        pieces.insert(rng.randint(0, len(pieces)), "ohwx_kfood_style")
    sep = rng.choice([", ", ",", " , ", "\n"])
    return sep.join(pieces)


@pytest.mark.parametrize("trigger", [None, "ohwx_kfood_style"])
def test_compose_parse_is_stable_property(vocab, trigger):
    rng = random.Random(1234)
    for _ in range(400):
        text = _random_caption(rng, vocab)
        once = compose(parse(text, vocab, trigger))
        twice = compose(parse(once, vocab, trigger))
        assert twice == once, text
        # nothing is dropped: every input phrase survives (duplicates collapse)
        kept = {normalise(p) for p in split_phrases(once)}
        for phrase in split_phrases(text):
            assert normalise(phrase) in kept or phrase.lower() in {p.lower() for p in split_phrases(once)}, phrase


def test_caption_from_backend_slots_and_subject_phrase():
    cap = caption_from_slots({"subject": "  bibimbap ", "shot": "close-up, overhead flat lay", "style": ["glossy"]})
    assert cap.subject == "bibimbap" and cap.shot == ["close-up", "overhead flat lay"] and cap.style == ["glossy"]
    assert subject_phrase("bibimbap") == "a photo of bibimbap"
    assert subject_phrase("A photo of bibimbap") == "A photo of bibimbap"
    with pytest.raises(ValueError, match="unknown slot"):
        Caption.from_dict({"subjekt": "x"})
