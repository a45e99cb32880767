"""Every embedding file we write passes the A1111 and ComfyUI accept rules; known-bad anchor outputs fail."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from ui_contracts import Refused, a1111_load, comfyui_vector

from lorastudio.models.embeddings import write_diffusers_embeddings, write_embedding

TRIGGER = "ohwx_kfood_style"


def test_sd15_and_sdxl_files_pass_a1111_and_comfyui(tmp_path):
    sd = load_file(str(write_embedding(tmp_path / "sd" / f"{TRIGGER}.safetensors", "sd15", [torch.randn(2, 32)])))
    assert a1111_load(sd, TRIGGER, "sd15", (32,)) == (TRIGGER, 32)
    assert comfyui_vector(sd, "clip_l", 32).shape == (2, 32)
    xl = load_file(str(write_embedding(tmp_path / "xl" / f"{TRIGGER}.safetensors", "sdxl", [torch.randn(2, 32), torch.randn(2, 48)])))
    assert a1111_load(xl, TRIGGER, "sdxl", (32, 48)) == (TRIGGER, 80)
    assert torch.equal(comfyui_vector(xl, "clip_l", 32), xl["clip_l"]) and torch.equal(comfyui_vector(xl, "clip_g", 48), xl["clip_g"])


def test_known_bad_anchor_outputs_fail_the_contracts(tmp_path):
    # diffusers' SDXL TI script: two files, each one key; neither is an SDXL embedding for A1111,
    # and ComfyUI's CLIP-G tokenizer gets the 768-wide (here 32) vectors of the first file.
    first, _second = write_diffusers_embeddings(tmp_path, TRIGGER, [torch.randn(2, 32), torch.randn(2, 48)])
    one = load_file(str(first))
    with pytest.raises(Refused, match="skipped"):
        a1111_load(one, "learned_embeds", "sdxl", (32, 48))
    with pytest.raises(Refused, match="shape mismatch"):
        comfyui_vector(one, "clip_g", 48)
    # OneTrainer SD1.5 with an output embedding: two keys -> "multiple terms".
    with pytest.raises(Refused, match="multiple terms"):
        a1111_load({"emp_params": torch.randn(1, 32), "emp_params_out": torch.randn(1, 32)}, "x", "sd15", (32,))
    # An SD1.5 embedding on SDXL: skipped by A1111.
    with pytest.raises(Refused):
        a1111_load({"emb_params": torch.randn(1, 32)}, "x", "sdxl", (32, 48))
