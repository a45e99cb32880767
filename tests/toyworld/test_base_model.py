"""The shipped toy base model: loads as a standard pipeline, small, follows prompts."""

from __future__ import annotations

import random

import pytest

from lorastudio.toyworld.base_quality import UNSEEN_PREFIX, load_pipeline, prompt_following
from lorastudio.toyworld.pretrain import BASE_DIR, random_prefix, shipped_base_dir, training_caption
from lorastudio.toyworld.scenes import SceneSpec

needs_model = pytest.mark.skipif(shipped_base_dir() is None,
                                 reason="toy base model not built: python -m lorastudio.toyworld.pretrain")


def test_training_captions_mix_prefixes_dropout_and_empty():
    rng = random.Random(0)
    spec = SceneSpec(background="blue backdrop", dish="tteokbokki", garnish="green onion", gloss=True)
    captions = [training_caption(spec, rng) for _ in range(400)]
    assert 0.05 < sum(c == "" for c in captions) / 400 < 0.15
    with_subject = [c for c in captions if c]
    # The subject is never dropped; about half the captions start with a made-up word.
    assert all("a photo of tteokbokki" in c for c in with_subject)
    prefixed = [c for c in with_subject if not c.startswith("a photo of")]
    assert 0.35 < len(prefixed) / len(with_subject) < 0.65
    assert len({random_prefix(rng) for _ in range(50)}) > 45


@needs_model
def test_shipped_model_is_small_fp16_and_loads():
    import torch

    size = sum(p.stat().st_size for p in BASE_DIR.rglob("*") if p.is_file())
    assert size < 20 * 1024 * 1024
    pipe = load_pipeline(BASE_DIR)
    assert pipe.vae.config.latent_channels == 4 and pipe.unet.config.sample_size == 16
    from safetensors import safe_open

    with safe_open(str(BASE_DIR / "unet" / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16


@needs_model
def test_shipped_model_follows_prompts_with_and_without_an_unseen_trigger():
    pipe = load_pipeline(BASE_DIR)
    plain = prompt_following(pipe, seeds=1, steps=12)
    prefixed = prompt_following(pipe, seeds=1, prefix=UNSEEN_PREFIX, steps=12)
    # 15 images each (5 backgrounds x 3 dishes, fixed seed); the full figures (more seeds)
    # are in the README. Thresholds sit below the measured values to allow for CPU numerics.
    assert plain["background"] >= MIN_BACKGROUND and plain["dish"] >= MIN_DISH, plain
    assert prefixed["background"] >= MIN_BACKGROUND - 0.15 and prefixed["dish"] >= MIN_DISH - 0.15, prefixed


@needs_model
def test_shipped_vae_keeps_the_attributes_the_experiments_read():
    from lorastudio.toyworld.base_quality import vae_roundtrip_accuracy

    acc = vae_roundtrip_accuracy(load_pipeline(BASE_DIR), n=100)
    for attribute in ("background", "dish", "garnish", "gloss"):
        assert acc[attribute] >= 0.85, acc


MIN_BACKGROUND = 0.6
MIN_DISH = 0.6
