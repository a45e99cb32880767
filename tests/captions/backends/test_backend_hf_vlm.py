"""hf-vlm: slot JSON parsing, and a tiny LLaVA (JoyCaption architecture) loaded from a folder."""

from __future__ import annotations

import pytest

from lorastudio.captions.backends import BackendError, get_backend
from lorastudio.captions.backends.hf_vlm import SLOT_PROMPT, parse_slot_json, vocabulary_hint
from lorastudio.captions.vocab import Attribute, Vocabulary

EMPTY_VOCAB = Vocabulary([])


def test_parse_plain_json_object():
    text = ('{"subject": "a photo of tteokbokki", "shot": ["close-up shot"], '
            '"objective": ["black background", " on a white plate "], "style": ["glossy"]}')
    assert parse_slot_json(text) == {
        "subject": "a photo of tteokbokki", "shot": ["close-up shot"],
        "objective": ["black background", "on a white plate"], "style": ["glossy"],
    }


def test_parse_fenced_json_with_chatter_and_string_lists():
    text = 'Sure! Here it is:\n```json\n{"subject": "bibimbap", "objective": "stone bowl, egg yolk"}\n```\nEnjoy.'
    assert parse_slot_json(text) == {"subject": "bibimbap", "objective": ["stone bowl", "egg yolk"]}


def test_parse_drops_unknown_keys_and_empty_phrases():
    assert parse_slot_json('{"subject": "kimbap", "mood": "happy", "style": ["", "soft light"]}') == {
        "subject": "kimbap", "style": ["soft light"]}


@pytest.mark.parametrize("text", [
    "",
    "a photo of fried chicken, close-up shot",        # no JSON at all
    '{"subject": "kimbap", "shot": ["close-up"',       # truncated reply
    '["close-up shot"]',                               # not an object
    '{"subject": ["a", "b"]}',                         # wrong type
    '{"shot": [1, 2]}',                                # wrong item type
    '{"answer": "kimbap"}',                            # no slot key
])
def test_malformed_replies_are_rejected(text):
    assert parse_slot_json(text) is None


def test_known_keys_with_empty_values_give_empty_slots():
    assert parse_slot_json('{"subject": "", "shot": []}') == {}


def test_default_prompt_lists_the_slots_in_golden_order():
    positions = [SLOT_PROMPT.index(f'"{key}"') for key in ("subject", "shot", "objective", "style")]
    assert positions == sorted(positions)
    assert "JSON" in SLOT_PROMPT


@pytest.mark.parametrize("fixture", ["llava_dir", "idefics3_dir"])
def test_vlm_gibberish_falls_back_to_text_and_batches(fixture, request, images):
    model_dir = request.getfixturevalue(fixture)
    backend = get_backend("hf-vlm", model=str(model_dir), vocab=EMPTY_VOCAB,
                          options={"max_new_tokens": 6, "prompt": "w5 w6 w7"})
    assert backend.processor.tokenizer.padding_side == "left"
    batched = backend.caption_batch(images)
    assert len(batched) == len(images)
    # A random model cannot write JSON: every reply takes the text path, none is lost.
    assert all(o.slots is None and isinstance(o.text, str) and o.text for o in batched)
    single = [backend.caption_batch([im])[0].text for im in images]
    assert [o.text for o in batched] == single
    assert len(set(single)) > 1


def test_llava_uses_the_chat_template_and_records_the_prompt(llava_dir):
    backend = get_backend("hf-vlm", model=str(llava_dir), vocab=EMPTY_VOCAB, options={"max_new_tokens": 2})
    assert backend.chat_text.startswith("user: <image>")
    assert backend.chat_text.endswith("assistant: ")
    assert SLOT_PROMPT in backend.chat_text
    prov = backend.provenance()
    assert prov["backend"] == "hf-vlm" and prov["params"]["model_type"] == "llava"
    assert prov["params"]["prompt"] == SLOT_PROMPT


def test_caption_model_is_refused(blip_dir):
    with pytest.raises(BackendError, match="model_type 'blip'.*hf-caption"):
        get_backend("hf-vlm", model=str(blip_dir), vocab=EMPTY_VOCAB)


def _attr(id_, group, slot, phrase):
    return Attribute(id=id_, group=group, exclusive=True, slot=slot, kind="objective", phrase=phrase)


def test_vocabulary_hint_takes_phrases_round_robin_per_slot():
    vocab = Vocabulary([
        _attr("bg.black", "bg", 4, "black background"), _attr("bg.white", "bg", 4, "white background"),
        _attr("surface.wood", "surface", 4, "dark wooden table"), _attr("angle.top", "angle", 3, "overhead flat lay"),
        _attr("light.soft", "light", 5, "soft diffused light"),
    ])
    assert vocabulary_hint(vocab, 3) == (
        "Prefer these phrases where they fit. shot: overhead flat lay; objective: black background, dark wooden table.")
    full = vocabulary_hint(vocab, 100)
    assert "objective: black background, dark wooden table, white background" in full
    assert "style: soft diffused light" in full
    assert vocabulary_hint(Vocabulary([]), 10) == ""


def test_vocabulary_hints_reach_the_prompt(llava_dir):
    vocab = Vocabulary([_attr("bg.black", "bg", 4, "black background")])
    backend = get_backend("hf-vlm", model=str(llava_dir), vocab=vocab, options={"vocabulary_hints": 5})
    assert "objective: black background." in backend.chat_text
    assert backend.provenance()["params"]["prompt"].endswith("objective: black background.")


def test_qwen2_vl_without_torchvision_says_what_to_install(tmp_path):
    import importlib.util
    import json

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}), encoding="utf-8")
    with pytest.raises(BackendError, match="qwen2_vl models need torchvision"):
        get_backend("hf-vlm", model=str(tmp_path), vocab=EMPTY_VOCAB)
