"""clip-probe on a tiny CLIP: normalised embeddings, softmax-within-group maths, slot choice."""

from __future__ import annotations

import numpy as np
import pytest

from lorastudio.captions.backends import BackendError, get_backend
from lorastudio.captions.vocab import Attribute, Vocabulary


def _attr(id_, group, exclusive, slot, phrase, prompts):
    return Attribute(id=id_, group=group, exclusive=exclusive, slot=slot, kind="objective",
                     phrase=phrase, prompts=tuple(prompts))


VOCAB = Vocabulary([
    _attr("bg.black", "background.color", True, 4, "black background",
          ["a food photo with a black background", "food on a black backdrop"]),
    _attr("bg.white", "background.color", True, 4, "white background", ["a food photo with a white background"]),
    _attr("bg.red", "background.color", True, 4, "red background", ["a food photo with a red background"]),
    _attr("angle.overhead", "angle", True, 3, "overhead flat lay", ["a top-down photo"]),
    _attr("garnish.sesame", "garnish", False, 4, "sprinkled with sesame seeds", ["food with sesame seeds"]),
    _attr("look.glossy", "look", False, 5, "glossy", ["a glossy food photo", "shiny glazed food"]),
])


@pytest.fixture(scope="module")
def probe(clip_dir):
    return get_backend("clip-probe", model=str(clip_dir), vocab=VOCAB, options={"batch_size": 3})


def test_embeddings_are_unit_length_and_batch_independent(probe, images):
    emb = probe.embed_images(images)
    assert emb.shape == (len(images), 16) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([probe.embed_images([im]) for im in images])
    np.testing.assert_allclose(emb, one_by_one, atol=1e-5)  # batch_size 3 splits 4 images in two passes
    texts = probe.embed_texts(["a photo", "food with sesame seeds"])
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)


def test_exclusive_group_softmax_includes_none(probe, images):
    emb = probe.embed_images(images)
    scores = probe.score(emb, VOCAB)
    assert set(scores) == {a.id for a in VOCAB.attributes}
    group = VOCAB.groups()["background.color"]
    full = probe.group_probabilities(emb, group, exclusive=True)
    assert full.shape == (len(images), 4)
    np.testing.assert_allclose(full.sum(axis=1), 1.0, atol=1e-6)
    colour_total = sum(scores[a.id] for a in group)
    np.testing.assert_allclose(colour_total + full[:, -1], 1.0, atol=1e-6)
    assert np.all(full[:, -1] > 0)  # "none" always keeps some mass

    # Independent recomputation: mean prompt vector per attribute, neutral "a photo", model scale.
    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)
    vecs = np.stack([unit(probe.embed_texts(list(a.prompts)).mean(axis=0)) for a in group])
    logits = probe.logit_scale * emb @ np.concatenate([vecs, probe.embed_texts(["a photo"])]).T
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(full, expected, rtol=1e-4, atol=1e-6)


def test_non_exclusive_attribute_is_scored_against_the_baseline(probe, images):
    emb = probe.embed_images(images)
    scores = probe.score(emb, VOCAB)
    sesame = probe.embed_texts(["food with sesame seeds"])[0]
    neutral = probe.embed_texts(["a photo"])[0]
    expected = 1 / (1 + np.exp(-probe.logit_scale * (emb @ sesame - emb @ neutral)))
    np.testing.assert_allclose(scores["garnish.sesame"], expected, rtol=1e-4)
    glossy = probe.group_probabilities(emb, VOCAB.groups()["look"], exclusive=False)
    np.testing.assert_allclose(glossy[:, -1], 1 - glossy[:, 0], atol=1e-6)


def test_threshold_zero_picks_one_per_exclusive_group_and_every_other(probe, images):
    probe.options.threshold = 0.0
    try:
        outputs = probe.caption_batch(images)
    finally:
        probe.options.threshold = 0.5
    assert len(outputs) == len(images)
    colours = {"black background", "white background", "red background"}
    for out in outputs:
        assert len(colours & set(out.slots["objective"])) == 1
        assert "sprinkled with sesame seeds" in out.slots["objective"]
        assert out.slots["shot"] == ["overhead flat lay"] and out.slots["style"] == ["glossy"]
        assert len(out.tags) == 4 and out.text is None
        probs = [p for _, p in out.tags]
        assert probs == sorted(probs, reverse=True)


def test_no_images_score_to_empty_arrays(probe):
    scores = probe.score(np.zeros((0, 0), dtype=np.float32), VOCAB)
    assert set(scores) == {a.id for a in VOCAB.attributes}
    assert all(v.shape == (0,) for v in scores.values())
    assert probe.embed_images([]).shape == (0, 16)


def test_max_phrases_keeps_the_most_probable(clip_dir, images):
    backend = get_backend("clip-probe", model=str(clip_dir), vocab=VOCAB, options={"threshold": 0.0, "max_phrases": 2})
    probs = backend.score(backend.embed_images(images), VOCAB)
    for i, out in enumerate(backend.caption_batch(images)):
        assert len(out.tags) == 2
        kept = min(p for _, p in out.tags)
        group_best = {}
        for attr in VOCAB.attributes:  # the candidates: best per exclusive group, every other attribute
            key = attr.group if attr.exclusive else attr.id
            group_best[key] = max(group_best.get(key, 0.0), float(probs[attr.id][i]))
        assert sum(p > kept + 1e-4 for p in group_best.values()) <= 1  # tags are rounded to 4 places


def test_threshold_one_keeps_nothing(clip_dir, images):
    backend = get_backend("clip-probe", model=str(clip_dir), vocab=VOCAB, options={"threshold": 1.0})
    assert all(o.slots is None and o.tags == [] for o in backend.caption_batch(images))


def test_groups_option_and_provenance(clip_dir, images):
    backend = get_backend("clip-probe", model=str(clip_dir), vocab=VOCAB,
                          options={"groups": ["garnish"], "logit_scale": 10.0})
    assert set(backend.score(backend.embed_images(images), VOCAB)) == {"garnish.sesame"}
    assert backend.logit_scale == 10.0
    prov = backend.provenance()
    assert prov["backend"] == "clip-probe" and prov["params"]["model_type"] == "clip"
    assert prov["params"]["groups"] == ["garnish"] and prov["params"]["neutral_prompts"] == ["a photo"]
    with pytest.raises(BackendError, match="unknown group"):
        get_backend("clip-probe", model=str(clip_dir), vocab=VOCAB, options={"groups": ["nope"]})


def test_non_clip_model_is_refused(blip_dir):
    with pytest.raises(BackendError, match="CLIP or SigLIP"):
        get_backend("clip-probe", model=str(blip_dir), vocab=VOCAB)


def test_siglip_model_takes_the_same_path(tmp_path, images):
    import tiny_caption_models as tiny

    model_dir = tiny.build_clip(tmp_path / "siglip", model_type="siglip")
    backend = get_backend("clip-probe", model=str(model_dir), vocab=VOCAB)
    assert backend.provenance()["params"]["model_type"] == "siglip"
    emb = backend.embed_images(images)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    full = backend.group_probabilities(emb, VOCAB.groups()["background.color"], exclusive=True)
    np.testing.assert_allclose(full.sum(axis=1), 1.0, atol=1e-6)
    assert len(backend.caption_batch(images)) == len(images)
