"""Both export formats, loaded by diffusers' own `load_lora_weights`, reproduce the adapter."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open

from lorastudio.models import lora
from lorastudio.models.kohya_keys import KOHYA_KEY_RE

from lora_helpers import attach_random, generate, load_pipe, text_encoders


def test_adapter_visibly_changes_the_image(sd15_export):
    assert np.abs(sd15_export["image"] - sd15_export["base"]).mean() > 1e-3


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_sd15_export_loads_in_diffusers_with_same_image(sd15_export, tiny_sd15_dir, fmt):
    pipe = load_pipe("sd15", tiny_sd15_dir)
    path = sd15_export["paths"][fmt]
    pipe.load_lora_weights(str(path.parent if fmt == "diffusers" else path))
    image = generate(pipe)
    np.testing.assert_allclose(image, sd15_export["image"], atol=2e-4)
    assert np.abs(image - sd15_export["base"]).mean() > 1e-3
    # The text encoder received its part of the adapter too.
    assert any("lora_A" in n for n, _ in pipe.text_encoder.named_parameters())


def test_kohya_key_grammar_and_shapes(sd15_export):
    with safe_open(str(sd15_export["paths"]["kohya"]), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = handle.metadata()
    assert all(KOHYA_KEY_RE.match(k) for k in tensors), [k for k in tensors if not KOHYA_KEY_RE.match(k)][:3]
    stems = {k.split(".", 1)[0] for k in tensors}
    assert len(tensors) == 3 * len(stems)
    conv_stems = 0
    for stem in stems:
        down, up, alpha = (tensors[f"{stem}.{s}"] for s in ("lora_down.weight", "lora_up.weight", "alpha"))
        assert alpha.dim() == 0
        assert down.shape[0] == up.shape[1]
        if down.dim() == 4:  # SD1.5 proj_in/proj_out are 1x1 convs
            conv_stems += 1
            assert up.shape[2:] == (1, 1) and down.shape[2:] == (1, 1)
            assert re.search(r"_proj_(in|out)$", stem)
        expected = (4, 8.0) if stem.startswith("lora_unet_") else (2, 1.0)
        assert (down.shape[0], alpha.item()) == expected
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    blocks = [m for m in sd15_export["pipe"].unet.modules() if isinstance(m, Transformer2DModel)]
    assert conv_stems == 2 * len(blocks)  # proj_in + proj_out of every transformer block
    assert all(isinstance(v, str) for v in metadata.values())
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "8.0"
    assert metadata["lorastudio.config_hash"] == "cafe" and metadata["ss_steps"] == "10"
    assert json.loads(metadata["ss_network_args"]) == {"text_encoder_dim": 2, "text_encoder_alpha": 1.0}


def test_alpha_scale_round_trip_peft_kohya_diffusers_kohya(sd15_export, tmp_path):
    pipe = sd15_export["pipe"]
    peft_modules = {(m.component, m.path): m for m in lora.collect_lora_modules(pipe.unet, "unet")}
    kohya = lora.read_lora(sd15_export["paths"]["kohya"])
    for module in kohya.modules:
        if module.component != "unet":
            continue
        layer = pipe.unet.get_submodule(module.path)
        expected = layer.scaling["default"] * (
            layer.lora_B["default"].weight.flatten(1) @ layer.lora_A["default"].weight.flatten(1))
        assert layer.scaling["default"] == pytest.approx(2.0)  # alpha 8 / rank 4
        torch.testing.assert_close(module.delta(), expected.detach())
        torch.testing.assert_close(module.delta(), peft_modules[(module.component, module.path)].delta())
    as_diffusers = lora.convert(kohya.path, tmp_path / "d", "diffusers")
    back = lora.convert(as_diffusers, tmp_path / "back.safetensors", "kohya")
    with safe_open(str(kohya.path), "pt") as a, safe_open(str(back), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for key in a.keys():
            torch.testing.assert_close(a.get_tensor(key), b.get_tensor(key), rtol=0, atol=0)


def test_sdxl_export_uses_te1_te2_and_ldm_names_and_loads(tiny_sdxl_dir, tmp_path):
    pipe = load_pipe("sdxl", tiny_sdxl_dir)
    base = generate(pipe)
    attach_random(pipe, targets="attn", rank=4, alpha=2.0)
    image = generate(pipe)
    assert np.abs(image - base).mean() > 1e-3
    paths = lora.export_adapter(tmp_path, family="sdxl", unet=pipe.unet, text_encoders=text_encoders(pipe),
                                rank=4, alpha=2.0)
    with safe_open(str(paths["kohya"]), "pt") as handle:
        stems = {k.split(".", 1)[0] for k in handle.keys()}
    prefixes = {re.match(r"lora_(unet|te1|te2)_", s)[0] for s in stems}
    assert prefixes == {"lora_unet_", "lora_te1_", "lora_te2_"}
    unet_stems = [s for s in stems if s.startswith("lora_unet_")]
    assert all(re.match(r"lora_unet_(input_blocks_[45]|middle_block|output_blocks_[0-2])_1_transformer_blocks_", s)
               for s in unet_stems), sorted(unet_stems)[:3]
    assert not any("down_blocks" in s or "up_blocks" in s for s in stems)
    fresh = load_pipe("sdxl", tiny_sdxl_dir)
    fresh.load_lora_weights(str(paths["kohya"]), adapter_name="kohya")
    np.testing.assert_allclose(generate(fresh), image, atol=2e-4)
    fresh.delete_adapters("kohya")
    # The diffusers file: compare the loaded layers' ΔW exactly instead of one more (slow) generation.
    fresh.load_lora_weights(str(paths["diffusers"]), adapter_name="d")
    for model, component in [(pipe.unet, "unet"), (pipe.text_encoder, "text_encoder"),
                             (pipe.text_encoder_2, "text_encoder_2")]:
        trained = {m.path: m for m in lora.collect_lora_modules(model, component)}
        loaded = {m.path: m for m in lora.collect_lora_modules(getattr(fresh, component), component, "d")}
        assert trained.keys() == loaded.keys()
        for path, module in trained.items():
            torch.testing.assert_close(loaded[path].delta(), module.delta())
