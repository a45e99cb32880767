"""SD2 kohya export (linear projections, lora_te_) and the metadata rules, without generation."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel

from lorastudio.models import lora
from lorastudio.models.kohya_keys import build_metadata
from lorastudio.models.tiny import component_configs


@pytest.fixture(scope="module")
def sd2_models():
    configs = component_configs("sd2")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**configs["unet"])
    te = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    lora.attach_lora(unet, rank=8, alpha=4, target_modules=lora.unet_target_modules(unet, "all_linear"),
                     init_lora_weights=False)
    lora.attach_lora(te, rank=8, alpha=4, target_modules=lora.text_encoder_target_modules(te, "attn"),
                     init_lora_weights="gaussian", dropout=0.1)
    return unet, te


def test_sd2_kohya_file_has_linear_projections_and_converts(sd2_models, tmp_path):
    unet, te = sd2_models
    paths = lora.export_adapter(tmp_path, family="sd2", unet=unet, text_encoders=[te], rank=8, alpha=4,
                                formats=("kohya",))
    assert set(paths) == {"kohya"} and not (tmp_path / "diffusers").exists()
    with safe_open(str(paths["kohya"]), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = handle.metadata()
    proj = [k for k in tensors if "_proj_in.lora_down" in k]
    assert proj and all(tensors[k].dim() == 2 for k in proj)  # use_linear_projection: Linear, not 1x1 conv
    assert {k.split("_text_model")[0] for k in tensors if k.startswith("lora_te")} == {"lora_te"}
    assert metadata["ss_v2"] == "True" and metadata["modelspec.architecture"].startswith("stable-diffusion-v2")
    converted, alphas = _convert_non_diffusers_lora_to_diffusers(dict(tensors))
    assert len(alphas) == len(tensors) // 3 and set(alphas.values()) == {4.0}
    assert any(k.startswith("text_encoder.text_model.encoder.layers.0.self_attn") for k in converted)
    assert lora.read_lora(paths["kohya"]).family == "sd2"


def test_export_refuses_rank_that_does_not_match_the_layers(sd2_models, tmp_path):
    unet, te = sd2_models
    with pytest.raises(ValueError, match="rank/alpha"):
        lora.export_adapter(tmp_path, family="sd2", unet=unet, text_encoders=[te], rank=4, alpha=4)
    with pytest.raises(ValueError, match="unknown export format"):
        lora.export_adapter(tmp_path, family="sd2", unet=unet, text_encoders=[te], rank=8, alpha=4, formats=("ckpt",))


def test_metadata_values_are_str_and_caller_cannot_contradict_weights():
    module = lora.LoraModule("unet", "mid_block.attentions.0.proj_in", torch.zeros(4, 3), torch.zeros(5, 4), 2.0)
    meta = build_metadata("sdxl", 4, 2.0, [module], {"ss_tag_frequency": json.dumps({"ds": {"kimchi": 3}}),
                                                      "lorastudio.manifest_hash": "ab12"})
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["lorastudio.manifest_hash"] == "ab12"
    assert json.loads(meta["ss_tag_frequency"]) == {"ds": {"kimchi": 3}}
    with pytest.raises(TypeError, match="ss_steps"):
        build_metadata("sd15", 4, 2.0, [module], {"ss_steps": 100})
    with pytest.raises(ValueError, match="ss_network_dim"):
        build_metadata("sd15", 4, 2.0, [module], {"ss_network_dim": "16"})
    assert module.delta().shape == (5, 3)
