"""Target presets against the real module trees (full-size shapes built on the meta device)."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from lora_helpers import SDXL_UNET
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from lorastudio.models import lora
from lorastudio.models.tiny import component_configs


@pytest.fixture(scope="module")
def full_sd15():
    configs = component_configs("sd15", "full")
    with torch.device("meta"):  # real SD1.5 module tree, no memory for weights
        return UNet2DConditionModel(**configs["unet"]), CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))


@pytest.fixture(scope="module")
def full_sdxl_unet():
    with torch.device("meta"):
        return UNet2DConditionModel(**SDXL_UNET)


def test_sd15_counts_match_kohya_and_diffusers_references(full_sd15):
    unet, te = full_sd15
    # kohya's default: 16 transformer blocks x 10 Linear + 16 x (proj_in, proj_out) = 192.
    assert len(lora.unet_target_modules(unet, "all_linear")) == 192
    assert len(lora.unet_target_modules(unet, "attn")) == 128  # the diffusers examples' coverage
    assert len(lora.unet_target_modules(unet, "attn_ff")) == 160
    assert len(lora.text_encoder_target_modules(te, "all_linear")) == 72
    assert len(lora.text_encoder_target_modules(te, "attn")) == 48


def test_sdxl_all_linear_count(full_sdxl_unet):
    # 70 transformer blocks x 10 + 11 Transformer2DModels x 2: kohya's 722 SDXL UNet modules.
    assert len(lora.unet_target_modules(full_sdxl_unet, "all_linear")) == 722


def test_preset_leaves_are_exactly_the_documented_ones(full_sd15):
    unet, _ = full_sd15
    leaves = {name.split("transformer_blocks.0.")[-1] for name in lora.unet_target_modules(unet, "attn_ff")}
    assert leaves == {f"attn{i}.{p}" for i in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0")} | {
        "ff.net.0.proj", "ff.net.2"}
    all_linear = lora.unet_target_modules(unet, "all_linear")
    conv = [n for n in all_linear if isinstance(unet.get_submodule(n), torch.nn.Conv2d)]
    assert len(conv) == 32 and all(n.endswith(("proj_in", "proj_out")) for n in conv)


def test_text_encoder_with_projection_keeps_text_model_prefix():
    config = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                            vocab_size=100, projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    with torch.device("meta"):
        te2 = CLIPTextModelWithProjection(config)
    names = lora.text_encoder_target_modules(te2, "all_linear")
    assert len(names) == 12 and all(n.startswith("text_model.encoder.layers.") for n in names)
    assert "text_projection" not in " ".join(names)


def test_explicit_module_list_and_unknown_names(full_sd15):
    unet, _ = full_sd15
    names = lora.unet_target_modules(unet, ["to_q", "mid_block.attentions.0.proj_in"])
    assert len(names) == 33 and "mid_block.attentions.0.proj_in" in names
    with pytest.raises(ValueError, match="to_qq"):
        lora.unet_target_modules(unet, ["to_qq"])
    with pytest.raises(ValueError, match="unknown target preset 'attention'"):
        lora.unet_target_modules(unet, "attention")


def test_attach_lora_rejects_bad_arguments(full_sd15):
    _, te = full_sd15
    with pytest.raises(ValueError, match="rank"):
        lora.attach_lora(te, rank=0, alpha=1, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="target_modules is empty"):
        lora.attach_lora(te, rank=4, alpha=1, target_modules=[])
