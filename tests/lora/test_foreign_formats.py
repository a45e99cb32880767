"""LoRA files from other trainers and files that are not what they claim, through the real CLI.

Every file here is written key by key with `safetensors.torch.save_file`, following each
format's own rules (kohya sd-scripts' metadata, the older diffusers key styles, LyCORIS
LoHa / LoKr), never with lorastudio's writer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from lora_helpers import generate, load_pipe
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from lorastudio.cli.main import cli
from lorastudio.models import lora

ATTN = [
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k",
    "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
    "up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_v",
]
TE_PATH = "text_model.encoder.layers.0.self_attn.q_proj"

# What kohya sd-scripts' train_network.py writes into a LoRA's header (values shortened).
KOHYA_METADATA = {
    "ss_session_id": "1234567890", "ss_training_started_at": "1764000000.0", "ss_output_name": "kfood",
    "ss_learning_rate": "0.0001", "ss_text_encoder_lr": "5e-05", "ss_unet_lr": "0.0001",
    "ss_num_train_images": "40", "ss_num_epochs": "10", "ss_max_train_steps": "1600", "ss_lr_scheduler": "cosine",
    "ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2.0",
    "ss_network_dropout": "None", "ss_mixed_precision": "fp16", "ss_v2": "False", "ss_base_model_version": "sd_v1",
    "ss_resolution": "(512, 512)", "ss_seed": "42", "ss_sd_model_name": "v1-5-pruned-emaonly.safetensors",
    "ss_tag_frequency": json.dumps({"10_kfood": {"ohwx_kfood_style": 40, "yangnyeom chicken": 12}}),
    "ss_dataset_dirs": json.dumps({"10_kfood": {"n_repeats": 10, "img_count": 40}}),
    "sshs_model_hash": "ab" * 32, "sshs_legacy_hash": "cd" * 4,
    "modelspec.sai_model_spec": "1.0.1", "modelspec.architecture": "stable-diffusion-v1/lora",
    "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
    "modelspec.title": "kfood", "modelspec.resolution": "512x512", "modelspec.date": "2026-11-30T10:00:00",
}


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _lines(result) -> list[str]:
    """What a command printed, without progress-bar lines."""
    return [line for line in result.output.strip().splitlines() if line.strip() and "it/s]" not in line]


def _pair(module, rank, generator):
    weight = module.weight
    down = torch.randn((rank, *weight.shape[1:]), generator=generator) * 0.3
    up_shape = (weight.shape[0], rank, 1, 1) if weight.dim() == 4 else (weight.shape[0], rank)
    up = torch.randn(up_shape, generator=generator) * 0.3
    return down, up


@pytest.fixture(scope="module")
def sd15_parts(tiny_sd15_dir):
    pipe = load_pipe("sd15", tiny_sd15_dir)
    return pipe.unet, pipe.text_encoder


def _kohya_tensors(unet, text_encoder, rank=4):
    generator = torch.Generator().manual_seed(3)
    state = {}
    for path in ATTN:
        down, up = _pair(unet.get_submodule(path), rank, generator)
        stem = "lora_unet_" + path.replace(".", "_")
        state |= {f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up,
                  f"{stem}.alpha": torch.tensor(2.0, dtype=torch.float16)}
    down, up = _pair(text_encoder.get_submodule(TE_PATH.removeprefix("text_model.")), rank, generator)
    stem = "lora_te_" + TE_PATH.replace(".", "_")
    state |= {f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up,
              f"{stem}.alpha": torch.tensor(2.0, dtype=torch.float16)}
    return state


def _generate_png(model, lora_file, out):
    result = _run("generate", "--model", model, "--lora", lora_file, "--prompt", "a photo of bibimbap",
                  "--steps", "2", "--size", "64x64", "--out", out, "--no-progress")
    return result, (np.asarray(Image.open(next(out.glob("*.png")))) if result.exit_code == 0 else None)


def test_kohya_file_with_its_own_metadata_exports_both_ways(sd15_parts, tiny_sd15_dir, tmp_path):
    src = tmp_path / "kfood.safetensors"
    save_file(_kohya_tensors(*sd15_parts), str(src), metadata=KOHYA_METADATA)
    before = src.read_bytes()
    result = _run("export", src, "--to", "diffusers", "--out", tmp_path / "d")
    assert result.exit_code == 0, result.output
    out = tmp_path / "d" / "pytorch_lora_weights.safetensors"
    with safe_open(str(out), "pt") as handle:
        meta = handle.metadata()
    # Descriptive keys come across as the source wrote them; hashes of the old bytes do not.
    assert meta["modelspec.sai_model_spec"] == "1.0.1" and meta["modelspec.title"] == "kfood"
    assert json.loads(meta["ss_tag_frequency"]) == json.loads(KOHYA_METADATA["ss_tag_frequency"])
    assert meta["ss_sd_model_name"] == "v1-5-pruned-emaonly.safetensors"
    assert "sshs_model_hash" not in meta and "sshs_legacy_hash" not in meta
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    back = _run("export", out.parent, "--to", "kohya", "--out", tmp_path / "k.safetensors")
    assert back.exit_code == 0, back.output
    with safe_open(str(src), "pt") as a, safe_open(str(tmp_path / "k.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for key in a.keys():
            assert torch.equal(a.get_tensor(key).float(), b.get_tensor(key).float()), key
    assert src.read_bytes() == before
    generated, _ = _generate_png(tiny_sd15_dir, src, tmp_path / "gen")
    assert generated.exit_code == 0, generated.output


def _old_diffusers_tensors(unet, text_encoder, processor_style: bool):
    """Old diffusers keys: `.lora.down/.up` (or `processor.to_q_lora`) and `.lora_linear_layer.` for the text encoder."""
    generator = torch.Generator().manual_seed(3)
    state = {}
    for path in ATTN:
        down, up = _pair(unet.get_submodule(path), 4, generator)
        if processor_style:
            block, proj = path.rsplit(".attn", 1)[0], path.split(".attn")[1]
            attn, leaf = proj.split(".", 1)
            leaf = "to_out" if leaf.startswith("to_out") else leaf
            stem = f"unet.{block}.attn{attn}.processor.{leaf}_lora"
            state |= {f"{stem}.down.weight": down, f"{stem}.up.weight": up}
        else:
            state |= {f"unet.{path}.lora.down.weight": down, f"unet.{path}.lora.up.weight": up}
    down, up = _pair(text_encoder.get_submodule(TE_PATH.removeprefix("text_model.")), 4, generator)
    state |= {f"text_encoder.{TE_PATH}.lora_linear_layer.down.weight": down,
              f"text_encoder.{TE_PATH}.lora_linear_layer.up.weight": up}
    return state


@pytest.mark.parametrize("processor_style", [False, True], ids=["lora-compatible", "attn-processor"])
def test_older_diffusers_format_inspects_exports_and_generates(sd15_parts, tiny_sd15_dir, tmp_path, processor_style):
    old = tmp_path / "pytorch_lora_weights.safetensors"
    tensors = _old_diffusers_tensors(*sd15_parts, processor_style)
    save_file(tensors, str(old))
    shown = _run("inspect", old, "--json")
    assert shown.exit_code == 0, shown.output
    summary = json.loads(shown.output)
    assert summary["format"] == "diffusers-old" and summary["modules"] == len(ATTN) + 1
    assert summary["alphas"] == [4.0]  # no alpha keys: alpha = rank, as diffusers assumed
    kohya = tmp_path / "k.safetensors"
    assert _run("export", old, "--to", "kohya", "--out", kohya).exit_code == 0
    parsed = lora.read_lora(kohya)
    assert {m.path for m in parsed.modules} == {*ATTN, TE_PATH}
    # The old file renders exactly what its kohya conversion renders, and differs from the base.
    with_old, image_old = _generate_png(tiny_sd15_dir, old, tmp_path / "a")
    assert with_old.exit_code == 0, with_old.output
    _, image_kohya = _generate_png(tiny_sd15_dir, kohya, tmp_path / "b")
    np.testing.assert_array_equal(image_old, image_kohya)
    base = generate(load_pipe("sd15", tiny_sd15_dir))
    assert np.abs(image_old / 255.0 - base).mean() > 1e-3


def _lycoris(unet, kind: str):
    generator = torch.Generator().manual_seed(5)
    state = {}
    for path in ATTN[:2]:
        out_f, in_f = unet.get_submodule(path).weight.shape
        stem = "lora_unet_" + path.replace(".", "_")
        if kind == "loha":
            for w in ("w1", "w2"):
                state[f"{stem}.hada_{w}_a"] = torch.randn(out_f, 2, generator=generator)
                state[f"{stem}.hada_{w}_b"] = torch.randn(2, in_f, generator=generator)
        else:
            state[f"{stem}.lokr_w1"] = torch.randn(4, 4, generator=generator)
            state[f"{stem}.lokr_w2_a"] = torch.randn(out_f // 4, 2, generator=generator)
            state[f"{stem}.lokr_w2_b"] = torch.randn(2, in_f // 4, generator=generator)
        state[f"{stem}.alpha"] = torch.tensor(2.0)
    return state


@pytest.mark.parametrize("kind,label", [("loha", "LoHa"), ("lokr", "LoKr")])
def test_lycoris_files_are_named_everywhere(sd15_parts, tiny_sd15_dir, tmp_path, kind, label):
    path = tmp_path / f"{kind}.safetensors"
    save_file(_lycoris(sd15_parts[0], kind), str(path), metadata={"ss_network_module": "lycoris.kohya"})
    shown = _run("inspect", path)
    assert shown.exit_code == 0, shown.output
    assert f"LyCORIS {label}" in shown.output and "ss_network_module: lycoris.kohya" in shown.output
    for result in (_run("export", path, "--to", "diffusers"), _generate_png(tiny_sd15_dir, path, tmp_path / "g")[0]):
        assert result.exit_code != 0
        lines = _lines(result)
        assert len(lines) == 1 and f"LyCORIS {label}" in lines[0] and "Traceback" not in result.output


def test_locon_is_named_and_generates(sd15_parts, tiny_sd15_dir, tmp_path):
    unet, text_encoder = sd15_parts
    state = _kohya_tensors(unet, text_encoder)
    down, up = _pair(unet.get_submodule("down_blocks.0.resnets.0.conv1"), 2, torch.Generator().manual_seed(9))
    state |= {"lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": down,
              "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": up}
    path = tmp_path / "locon.safetensors"
    save_file(state, str(path), metadata={"ss_network_module": "lycoris.kohya"})
    summary = json.loads(_run("inspect", path, "--json").output)
    assert summary["format"] == "kohya-locon" and "LoCon" in summary["format_label"]
    result, _ = _generate_png(tiny_sd15_dir, path, tmp_path / "g")
    assert result.exit_code == 0, result.output


def test_a_lora_for_another_base_is_one_short_error(tiny_sdxl_dir, tiny_sd15_dir, sd15_parts, tmp_path):
    from lora_helpers import attach_random, text_encoders

    xl = load_pipe("sdxl", tiny_sdxl_dir)
    attach_random(xl, targets="attn")
    xl_file = lora.export_adapter(tmp_path / "xl", family="sdxl", unet=xl.unet, text_encoders=text_encoders(xl),
                                  rank=4, alpha=8.0)["kohya"]
    result, _ = _generate_png(tiny_sd15_dir, xl_file, tmp_path / "g1")
    assert result.exit_code != 0
    lines = _lines(result)
    assert len(lines) == 1 and "size mismatch" not in result.output, result.output
    assert "does not fit" in lines[0] and "SDXL LoRA" in lines[0] and "SD1.x/2.x" in lines[0]
    # Same family, other dimensions (a LoRA for a full-size SD1.5 on the tiny one).
    wide = {}
    for path in ATTN:
        stem = "lora_unet_" + path.replace(".", "_")
        wide |= {f"{stem}.lora_down.weight": torch.zeros(4, 320), f"{stem}.lora_up.weight": torch.zeros(320, 4)}
    save_file(wide, str(tmp_path / "wide.safetensors"))
    result, _ = _generate_png(tiny_sd15_dir, tmp_path / "wide.safetensors", tmp_path / "g2")
    lines = _lines(result)
    assert result.exit_code != 0 and len(lines) == 1
    assert "4 of 4 modules do not match" in lines[0] and "LoRA 320->320" in lines[0]


@pytest.fixture
def bad_files(tmp_path, sd15_parts):
    good = tmp_path / "good.safetensors"
    save_file(_kohya_tensors(*sd15_parts), str(good))
    raw = good.read_bytes()
    files = {}
    for name in ("pickled.safetensors", "pickled.SafeTensors"):
        torch.save({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, tmp_path / name, _use_new_zipfile_serialization=False)
        files[name] = "Python pickle"
    (tmp_path / "zipped.safetensors").write_bytes(b"")
    torch.save({"w": torch.zeros(2)}, tmp_path / "zipped.safetensors")
    files["zipped.safetensors"] = "zip archive"
    (tmp_path / "random.safetensors").write_bytes(bytes(range(7, 250)) * 40)
    files["random.safetensors"] = "header length"
    (tmp_path / "json.safetensors").write_bytes(len(b"{not json}").to_bytes(8, "little") + b"{not json}")
    files["json.safetensors"] = "not valid JSON"
    (tmp_path / "truncated.safetensors").write_bytes(raw[: len(raw) - 100])
    files["truncated.safetensors"] = "truncated"
    return {tmp_path / name: expected for name, expected in files.items()}


def test_files_that_are_not_what_they_claim_get_one_line(bad_files, tiny_sd15_dir, tmp_path):
    for path, expected in bad_files.items():
        runs = [_run("inspect", path), _run("export", path, "--to", "diffusers", "--out", tmp_path / "x"),
                _generate_png(tiny_sd15_dir, path, tmp_path / "g")[0],
                _run("generate", "--model", path, "--family", "sd15", "--prompt", "x", "--out", tmp_path / "m")]
        for result in runs:
            lines = _lines(result)
            assert result.exit_code != 0, (path, result.output)
            assert len(lines) == 1 and str(path) in lines[0] and expected in lines[0], (path, result.output)
    assert not (tmp_path / "x").exists()


def test_a_ckpt_base_model_names_allow_pickle(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, ckpt)
    result = _run("generate", "--model", ckpt, "--family", "sd15", "--prompt", "x", "--out", tmp_path / "o")
    assert result.exit_code != 0
    assert "pickle" in result.output and "--allow-pickle" in result.output
    assert "neither a valid local path" not in result.output
