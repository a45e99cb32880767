"""kohya key names: SDXL LDM block names, and diffusers' own converter accepting our files."""

from __future__ import annotations

import pytest
import torch
from diffusers.loaders.lora_conversion_utils import (
    _convert_non_diffusers_lora_to_diffusers,
    _maybe_map_sgm_blocks_to_diffusers,
)
from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft
from lora_helpers import SDXL_UNET

from lorastudio.models import lora
from lorastudio.models.kohya_keys import (
    KOHYA_KEY_RE,
    UNetLayout,
    diffusers_to_ldm,
    from_stem,
    ldm_to_diffusers,
    to_stem,
)

SDXL = UNetLayout()


@pytest.mark.parametrize("path, ldm", [
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "input_blocks.4.1.transformer_blocks.0.attn1.to_q"),
    ("down_blocks.2.attentions.1.proj_out", "input_blocks.8.1.proj_out"),
    ("mid_block.attentions.0.transformer_blocks.9.ff.net.2", "middle_block.1.transformer_blocks.9.ff.net.2"),
    ("up_blocks.0.attentions.0.proj_in", "output_blocks.0.1.proj_in"),
    ("up_blocks.1.attentions.2.transformer_blocks.1.attn2.to_out.0", "output_blocks.5.1.transformer_blocks.1.attn2.to_out.0"),
    ("down_blocks.0.resnets.1.conv1", "input_blocks.2.0.in_layers.2"),
    ("down_blocks.1.downsamplers.0.conv", "input_blocks.6.0.op"),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
    ("up_blocks.2.resnets.2.conv_shortcut", "output_blocks.8.0.skip_connection"),
    ("mid_block.resnets.1.time_emb_proj", "middle_block.2.emb_layers.1"),
    ("conv_in", "input_blocks.0.0"),
])
def test_sdxl_ldm_names_both_ways(path, ldm):
    assert diffusers_to_ldm(path, SDXL) == ldm
    assert ldm_to_diffusers(ldm, SDXL) == path


@pytest.mark.parametrize("component, path, family, stem", [
    ("unet", "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_out.0", "sd15",
     "lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_attn1_to_out_0"),
    ("unet", "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj", "sd2",
     "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_0_proj"),
    ("text_encoder", "text_model.encoder.layers.11.self_attn.out_proj", "sd15",
     "lora_te_text_model_encoder_layers_11_self_attn_out_proj"),
    ("text_encoder", "text_model.encoder.layers.0.mlp.fc1", "sdxl", "lora_te1_text_model_encoder_layers_0_mlp_fc1"),
    ("text_encoder_2", "text_model.encoder.layers.31.self_attn.k_proj", "sdxl",
     "lora_te2_text_model_encoder_layers_31_self_attn_k_proj"),
    ("unet", "mid_block.attentions.0.proj_in", "sdxl", "lora_unet_middle_block_1_proj_in"),
])
def test_stems_both_ways(component, path, family, stem):
    assert to_stem(component, path, family) == stem
    assert from_stem(stem) == (component, path)
    assert KOHYA_KEY_RE.match(stem + ".lora_down.weight")


def test_second_text_encoder_needs_sdxl():
    with pytest.raises(ValueError, match="one text encoder"):
        to_stem("text_encoder_2", "text_model.encoder.layers.0.mlp.fc1", "sd15")


def test_diffusers_converter_takes_full_sdxl_file_without_leftovers():
    with torch.device("meta"):
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel(**SDXL_UNET)
    paths = lora.unet_target_modules(unet, "all_linear")
    state = {}
    for path in paths:
        stem = to_stem("unet", path, "sdxl", UNetLayout.from_unet_config(unet.config))
        assert "down_blocks" not in stem and "up_blocks" not in stem
        state.update({f"{stem}.lora_down.weight": torch.zeros(1), f"{stem}.lora_up.weight": torch.zeros(1),
                      f"{stem}.alpha": torch.tensor(3.0)})
    for i in range(2):
        state[f"lora_te{i + 1}_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(1)
        state[f"lora_te{i + 1}_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.zeros(1)
    mapped = _maybe_map_sgm_blocks_to_diffusers(dict(state), unet.config)
    converted, alphas = _convert_non_diffusers_lora_to_diffusers(mapped)  # raises on any leftover key
    assert len(alphas) == 722 and set(alphas.values()) == {3.0}
    unet_keys = {k.removeprefix("unet."): v for k, v in converted.items() if k.startswith("unet.")}
    peft_keys = convert_unet_state_dict_to_peft(unet_keys)
    modules = {k.rsplit(".lora_", 1)[0] for k in peft_keys}
    assert modules == set(paths)
    assert any(k.startswith("text_encoder_2.") for k in converted)
