"""Our single-file export loads back through diffusers' own `from_single_file`, bit for bit."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from lorastudio.models.single_file import convert_folder
from lorastudio.models.tiny import pipeline_class


def _sdxl_with_distinct_widths(out):
    """A tiny SDXL whose two text encoders differ in width (32 and 48), as in the real model.

    diffusers' `from_single_file` tells CLIP-L from CLIP-G by width; with the shared tiny
    width of 32 it loads the CLIP-L weights into text_encoder_2, whatever the file holds.
    """
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lorastudio.models.tiny import _save_pipeline, build_components, component_configs

    configs = component_configs("sdxl")
    te2 = {**configs["text_encoder_2"], "hidden_size": 48, "intermediate_size": 53}
    unet = {**configs["unet"], "cross_attention_dim": 80}
    parts = build_components("sdxl")
    torch.manual_seed(0)
    parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**te2)).eval()
    parts["text_encoder"] = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])).eval()
    parts["unet"] = diffusers.UNet2DConditionModel(**unet).eval()
    _save_pipeline(pipeline_class("sdxl")(**parts), out)
    return out


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_single_file_round_trip(tmp_path, family, request):
    folder = request.getfixturevalue(f"tiny_{family}_dir") if family != "sdxl" else _sdxl_with_distinct_widths(tmp_path / "xl")
    out = convert_folder(folder, tmp_path / "model.safetensors", family)
    with safe_open(str(out), framework="pt") as fh:
        keys = set(fh.keys())
        if family == "sdxl":
            proj = fh.get_tensor("conditioner.embedders.1.model.text_projection")
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)
    assert any(k.startswith("first_stage_model.decoder.up.") for k in keys)
    te = {"sd15": "cond_stage_model.transformer.text_model.", "sd2": "cond_stage_model.model.transformer.resblocks.",
          "sdxl": "conditioner.embedders.0.transformer.text_model."}[family]
    assert any(k.startswith(te) for k in keys)
    cls = pipeline_class(family)
    original = cls.from_pretrained(str(folder))
    rows = len(original.tokenizer)
    assert original.text_encoder.get_input_embeddings().weight.shape[0] == rows
    if family == "sdxl":
        assert any(k.startswith("conditioner.embedders.1.model.transformer.resblocks.") for k in keys)
        assert torch.equal(proj, original.text_encoder_2.text_projection.weight.T)
    loaded = cls.from_single_file(str(out), config=str(folder), local_files_only=True)
    names = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    for name in names:
        a, b = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
        common = [k for k in a if not k.endswith("position_ids")]
        missing = [k for k in common if k not in b]
        assert not missing, f"{name}: {missing[:3]}"
        diff = max((a[k].float() - b[k].float()).abs().max().item() for k in common)
        assert diff == 0.0, f"{name} differs by {diff}"
