"""The shipped toy base model: loads as a standard pipeline, small, follows prompts."""

from __future__ import annotations

import random

import pytest

from lorastudio.toyworld.base_quality import UNSEEN_PREFIX, load_pipeline, prompt_following
from lorastudio.toyworld.pretrain import (
    ATTRIBUTE_GROUPS,
    BASE_DIR,
    caption_parts,
    caption_with_labels,
    join_caption,
    prefix_token_counts,
    random_prefix,
    shipped_base_dir,
    training_caption,
)
from lorastudio.toyworld.scenes import BACKGROUND_PHRASES, GARNISH_PHRASES, LIGHTING_PHRASES, VESSEL_PHRASES, SceneSpec, random_spec

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
    prefixes = [random_prefix(rng) for _ in range(200)]
    assert len(set(prefixes)) > 190
    # One to three pieces, in several joining styles; never the evaluation trigger.
    assert any("_" in p for p in prefixes) and any(" " in p for p in prefixes) and any("-" in p for p in prefixes)
    assert UNSEEN_PREFIX not in prefixes


def test_prefix_token_counts_align_prefixed_and_plain_captions():
    from transformers import CLIPTokenizer

    from lorastudio.models.tokenizer import tokenizer_files_dir

    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_files_dir()))
    rng = random.Random(7)
    checked = 0
    for _ in range(300):
        prefix, body, _ = caption_parts(random_spec(rng), rng)
        (shift,) = prefix_token_counts(tokenizer, [prefix])
        assert (shift > 0) == bool(prefix)
        joined = tokenizer(join_caption(prefix, body)).input_ids
        # Everything after the prefix is the plain caption's tokens: what the invariance
        # term of the text encoder stage compares position by position.
        assert joined[1 + shift :] == tokenizer(body).input_ids[1:], (prefix, body)
        checked += bool(prefix)
    assert checked > 100


def test_decoder_stage_tunes_the_decoder_and_leaves_the_latents_alone():
    import torch
    from diffusers import AutoencoderKL

    from lorastudio.toyworld.pretrain import encode_all, finetune_decoder, make_dataset, vae_config

    torch.manual_seed(0)
    vae = AutoencoderKL(**vae_config())
    images, specs = make_dataset(8, seed=3)
    before = encode_all(vae, images)
    encoder_before = {k: v.clone() for k, v in vae.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}
    decoder_before = vae.decoder.conv_out.weight.detach().clone()
    finetune_decoder(vae, images, specs, before, steps=2, batch=4, seed=0, log=lambda msg: None)
    after = vae.state_dict()
    assert all(torch.equal(after[k], v) for k, v in encoder_before.items())
    assert torch.allclose(encode_all(vae, images), before, atol=1e-5)
    assert not torch.equal(vae.decoder.conv_out.weight, decoder_before)
    assert not any(p.requires_grad for p in vae.parameters())


def test_lighting_gain_undoes_each_scenes_light():
    from lorastudio.toyworld.pretrain import lighting_gain
    from lorastudio.toyworld.scenes import LIGHTING, WARM_TINT

    gain = lighting_gain([SceneSpec(lighting="dim"), SceneSpec(lighting="warm"), SceneSpec(lighting="neutral")])
    assert gain.shape == (3, 3, 1, 1)
    assert abs(float(gain[0, 0]) * LIGHTING["dim"] - 1) < 1e-6
    assert abs(float(gain[1, 2]) * WARM_TINT[2] - 1) < 1e-6
    assert float(gain[2].min()) == float(gain[2].max()) == 1.0


def test_text_encoder_labels_say_exactly_what_the_caption_names():
    rng = random.Random(3)
    phrases = {"background": BACKGROUND_PHRASES, "vessel": VESSEL_PHRASES, "garnish": GARNISH_PHRASES,
               "lighting": LIGHTING_PHRASES, "gloss": {"glossy": "glossy"}}
    seen_unsaid = seen_named = 0
    for _ in range(300):
        spec = random_spec(rng)
        caption, labels = caption_with_labels(spec, rng)
        parts = caption.split(", ")
        for group, table in phrases.items():
            named = [value for value, phrase in table.items() if phrase in parts]
            expected = ATTRIBUTE_GROUPS[group].index(named[0]) + 1 if named else 0
            assert labels[group] == expected, (caption, group, labels)
            seen_unsaid += expected == 0
            seen_named += expected != 0
        dish = ATTRIBUTE_GROUPS["dish"].index(spec.dish) + 1
        assert labels["dish"] == (dish if caption else 0)
    assert seen_unsaid > 200 and seen_named > 600


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
def test_shipped_model_was_made_by_the_pretrain_defaults():
    import json

    from lorastudio.toyworld.pretrain import build_parser

    info = json.loads((BASE_DIR / "lorastudio_model.json").read_text())
    defaults = vars(build_parser().parse_args([]))
    for key in ("seed", "images", "vae_steps", "vae_batch", "decoder_steps", "text_steps", "invariance",
                "unet_steps", "unet_width", "batch"):
        assert info[key] == defaults[key], (key, info[key], defaults[key])
    assert info["vae_from"] == "trained in this run"


@needs_model
def test_shipped_model_follows_prompts_with_and_without_an_unseen_trigger():
    pipe = load_pipeline(BASE_DIR)
    plain = prompt_following(pipe, seeds=1, steps=12)
    prefixed = prompt_following(pipe, seeds=1, prefix=UNSEEN_PREFIX, steps=12)
    # 15 images each (5 backgrounds x 3 dishes, seed 0, 12 steps). Measured on the
    # development machine: 100% / 93.3% both without and with the unseen trigger; the README
    # has the 60-image figures. One image is 6.7 points, so each bound allows one miss below
    # the 85% for CPU numerics, and the trigger may cost at most two images.
    assert plain["background"] >= MIN_FOLLOWING and plain["dish"] >= MIN_FOLLOWING, plain
    assert prefixed["background"] >= MIN_FOLLOWING and prefixed["dish"] >= MIN_FOLLOWING, prefixed
    for attribute in ("background", "dish"):
        assert plain[attribute] - prefixed[attribute] <= 2 / 15 + 1e-9, (attribute, plain, prefixed)


@needs_model
def test_shipped_vae_keeps_the_attributes_the_experiments_read():
    from lorastudio.toyworld.base_quality import vae_roundtrip_accuracy

    acc = vae_roundtrip_accuracy(load_pipeline(BASE_DIR), n=100)
    # Measured on these 100 scenes: background 100%, dish 99%, garnish 99%, gloss 98%; the
    # issue asks for 90% on every attribute the experiments read.
    for attribute in ("background", "dish", "garnish", "gloss"):
        assert acc[attribute] >= 0.9, acc


MIN_FOLLOWING = 0.8  # 12 of 15 images
