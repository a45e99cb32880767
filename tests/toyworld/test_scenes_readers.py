"""The generator is deterministic and the attribute readers recover its ground truth."""

from __future__ import annotations

import random

import numpy as np

from lorastudio.captions.vocab import load_vocabulary
from lorastudio.toyworld.readers import ATTRIBUTES, accuracy, read_scene
from lorastudio.toyworld.scenes import SceneSpec, golden_caption, random_spec, render


def test_render_is_deterministic_for_a_seed():
    spec = SceneSpec(background="marble", dish="bibimbap", garnish="green onion", gloss=True, lighting="warm")
    a, b = np.asarray(render(spec, seed=3)), np.asarray(render(spec, seed=3))
    c = np.asarray(render(spec, seed=4))
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_random_spec_is_deterministic_and_pins_attributes():
    first = [random_spec(random.Random(7)) for _ in range(2)]
    assert first[0] == first[1]
    pinned = [random_spec(random.Random(i), background="black") for i in range(20)]
    assert {s.background for s in pinned} == {"black"}
    assert len({s.dish for s in pinned}) == 3


def test_golden_caption_uses_vocabulary_phrases_in_order():
    spec = SceneSpec(background="blue backdrop", vessel="black bowl", dish="tteokbokki", garnish="sesame seeds",
                     gloss=True, lighting="dim")
    text = golden_caption(spec, trigger="ohwx_kfood_style")
    assert text.split(", ")[:2] == ["ohwx_kfood_style", "a photo of tteokbokki"]
    mentioned = load_vocabulary().mentions(text)
    assert {"bg.blue", "vessel.black_bowl", "garnish.sesame", "look.glossy", "light.dim"} <= mentioned
    assert golden_caption(spec, trigger="t", mode="minimal") == "t, a photo of tteokbokki"


def test_readers_recover_ground_truth_on_generator_images():
    acc = accuracy(n=150, seed=5)
    assert set(acc) == set(ATTRIBUTES)
    for attribute, value in acc.items():
        assert value >= 0.95, (attribute, acc)


def test_readers_work_at_photo_size():
    spec = SceneSpec(background="wooden table", vessel="white plate", dish="yangnyeom chicken",
                     garnish="sesame seeds", gloss=True, lighting="neutral")
    got = read_scene(render(spec, 320, 240, seed=1, noise=6.0))
    assert got.to_dict() == spec.to_dict()


def test_prompt_following_reads_what_the_prompt_asked_for():
    from lorastudio.toyworld.readers import prompt_following, requested
    from lorastudio.toyworld.scenes import SceneSpec, golden_caption, render

    asked = SceneSpec(background="blue backdrop", dish="tteokbokki", vessel="white plate")
    other = SceneSpec(background="black", dish="bibimbap", vessel="white plate")
    prompt = "ohwx_kfood_style, " + golden_caption(asked)
    assert requested(prompt) == {"background": "blue backdrop", "dish": "tteokbokki"}
    assert requested("a photo of soup") == {}
    right, wrong = render(asked, 64, 64, seed=3), render(other, 64, 64, seed=3)
    assert prompt_following([prompt], [right]) == {"background": 1.0, "dish": 1.0}
    assert prompt_following([prompt], [wrong]) == {"background": 0.0, "dish": 0.0}
    assert prompt_following(["a photo of soup"], [right]) == {"background": None, "dish": None}


def test_a_pale_cool_background_is_not_the_blue_backdrop():
    from lorastudio.toyworld.readers import read_background

    def frame(colour):
        arr = np.zeros((64, 64, 3), np.uint8)
        arr[:] = colour
        return arr

    # Off-white and pale grey with a cool cast, as a diffusion model draws white and marble.
    for pale in [(176, 187, 194), (218, 225, 250), (200, 217, 244)]:
        assert read_background(frame(pale)) == "white", pale
    # The backdrop itself, neutral, dim and under warm light.
    for blue in [(52, 92, 170), (31, 55, 102), (58, 90, 133)]:
        assert read_background(frame(blue)) == "blue backdrop", blue
