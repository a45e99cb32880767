"""A kohya file from another trainer (LoCon convs, some alphas missing) converts and loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lora_helpers import generate, load_pipe
from safetensors.torch import save_file

from lorastudio.models import lora

# (module path, rank, alpha or None). Missing alpha means alpha = rank for A1111 / ComfyUI.
MODULES = [
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", 4, 2.0),
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", 4, None),
    ("down_blocks.1.attentions.1.proj_in", 4, 1.0),  # 1x1 conv in SD1.5
    ("mid_block.attentions.0.transformer_blocks.0.ff.net.2", 4, None),
    ("up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_out.0", 4, 8.0),
    ("down_blocks.0.resnets.0.conv1", 2, 1.0),  # LoCon: 3x3 conv
    ("up_blocks.1.resnets.2.conv2", 2, None),
]
TE = ("text_model.encoder.layers.1.self_attn.v_proj", 2, 4.0)


def _hand_built(unet, text_encoder) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    state = {}
    for component, (path, rank, alpha), module in [
        *[("unet", m, unet.get_submodule(m[0])) for m in MODULES],
        ("te", TE, text_encoder.get_submodule(TE[0].removeprefix("text_model."))),
    ]:
        stem = f"lora_{component}_" + path.replace(".", "_")
        weight = module.weight
        down_shape = (rank, *weight.shape[1:])  # [r, in] or [r, in, kh, kw]
        up_shape = (weight.shape[0], rank, *([1, 1] if weight.dim() == 4 else []))
        state[f"{stem}.lora_down.weight"] = torch.randn(down_shape, generator=generator) * 0.2
        state[f"{stem}.lora_up.weight"] = torch.randn(up_shape, generator=generator) * 0.2
        if alpha is not None:
            state[f"{stem}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
    return state


def _merge_by_hand(pipe, state) -> None:
    """W += alpha / r · up @ down, the way A1111 applies a kohya file."""
    with torch.no_grad():
        for key in [k for k in state if k.endswith(".lora_down.weight")]:
            stem = key.split(".")[0]
            down, up = state[key], state[f"{stem}.lora_up.weight"]
            alpha = state[f"{stem}.alpha"].item() if f"{stem}.alpha" in state else down.shape[0]
            path = MODULES_BY_STEM[stem]
            model = pipe.unet if stem.startswith("lora_unet_") else pipe.text_encoder
            weight = model.get_submodule(path).weight
            delta = (alpha / down.shape[0]) * (up.flatten(1) @ down.flatten(1))
            weight += delta.reshape(weight.shape)


MODULES_BY_STEM = {f"lora_unet_{p.replace('.', '_')}": p for p, _, _ in MODULES}
MODULES_BY_STEM[f"lora_te_{TE[0].replace('.', '_')}"] = TE[0].removeprefix("text_model.")


@pytest.fixture(scope="module")
def other_file(tiny_sd15_dir, tmp_path_factory):
    pipe = load_pipe("sd15", tiny_sd15_dir)
    state = _hand_built(pipe.unet, pipe.text_encoder)
    path = tmp_path_factory.mktemp("other") / "other_trainer.safetensors"
    save_file(state, str(path), metadata={"ss_network_dim": "4", "ss_network_alpha": "2.0", "sshs_model_hash": "x"})
    return path, state


def test_read_fills_missing_alpha_with_rank(other_file):
    path, _ = other_file
    parsed = lora.read_lora(path)
    assert parsed.format == "kohya-locon" and parsed.family == "sd15"  # 3x3 convs: LyCORIS LoCon
    alphas = {m.path: (m.rank, m.alpha) for m in parsed.modules}
    for module_path, rank, alpha in MODULES:
        assert alphas[module_path] == (rank, alpha if alpha is not None else float(rank))
    assert alphas[TE[0]] == (2, 4.0)
    assert parsed.summary()["rank_varies"] and parsed.summary()["alpha_varies"]


def test_converted_file_loads_in_diffusers_like_a1111_merge(other_file, tiny_sd15_dir, tmp_path):
    path, state = other_file
    out = lora.convert(path, tmp_path / "converted", "diffusers")
    assert "sshs_model_hash" not in lora.read_lora(out).metadata  # stale hashes are dropped
    reference_pipe = load_pipe("sd15", tiny_sd15_dir)
    base = generate(reference_pipe)
    _merge_by_hand(reference_pipe, state)
    reference = generate(reference_pipe)
    assert np.abs(reference - base).mean() > 1e-3
    pipe = load_pipe("sd15", tiny_sd15_dir)
    pipe.load_lora_weights(str(out.parent))
    np.testing.assert_allclose(generate(pipe), reference, atol=2e-4)
    assert sum("lora_A" in n for n, _ in pipe.unet.named_parameters()) == len(MODULES)
    back = lora.read_lora(lora.convert(out, tmp_path / "back.safetensors", "kohya"))
    assert {(m.path, m.rank, m.alpha) for m in back.modules} == {
        (m.path, m.rank, m.alpha) for m in lora.read_lora(path).modules}


def test_kohya_file_with_unknown_keys_is_refused(other_file, tmp_path):
    _, state = other_file
    bad = dict(state)
    bad["lora_unet_mid_block_attentions_0_proj_in.dora_scale"] = torch.ones(1)
    save_file(bad, str(tmp_path / "dora.safetensors"))
    with pytest.raises(ValueError, match="DoRA"):
        lora.read_lora(tmp_path / "dora.safetensors")
