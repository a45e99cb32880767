"""`lorastudio export` and `lorastudio inspect` end to end through the real CLI entry point."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner
from safetensors import safe_open

from lorastudio.cli.main import cli
from lorastudio.models import lora


def _run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_export_both_ways_and_never_overwrites(sd15_export, tmp_path):
    kohya = sd15_export["paths"]["kohya"]
    before = kohya.read_bytes()
    result = _run("export", kohya, "--to", "diffusers", "--out", tmp_path / "d")
    assert result.exit_code == 0, result.output
    written = tmp_path / "d" / "pytorch_lora_weights.safetensors"
    assert written.is_file() and "rank 4, alpha 8" in result.output
    again = _run("export", kohya, "--to", "diffusers", "--out", tmp_path / "d")
    assert again.exit_code != 0 and "--force" in again.output
    assert _run("export", kohya, "--to", "diffusers", "--out", tmp_path / "d", "--force").exit_code == 0
    back = _run("export", tmp_path / "d", "--to", "kohya", "--out", tmp_path / "k.safetensors")
    assert back.exit_code == 0, back.output
    with safe_open(str(kohya), "pt") as a, safe_open(str(tmp_path / "k.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
        assert b.metadata()["lorastudio.config_hash"] == "cafe"  # provenance survives both hops
    assert kohya.read_bytes() == before  # the input is never touched


def test_export_default_output_is_beside_the_input(sd15_export, tmp_path):
    src = tmp_path / "mine.safetensors"
    src.write_bytes(sd15_export["paths"]["kohya"].read_bytes())
    assert _run("export", src, "--to", "diffusers").exit_code == 0
    assert (tmp_path / "mine-diffusers" / "pytorch_lora_weights.safetensors").is_file()


def test_inspect_text_and_json(sd15_export):
    kohya = sd15_export["paths"]["kohya"]
    text = _run("inspect", kohya)
    assert text.exit_code == 0, text.output
    assert "format:  kohya (family sd15): kohya LoRA" in text.output
    assert "rank:    4 (varies per module: 2, 4)" in text.output
    assert "ss_network_alpha: 8.0" in text.output
    as_json = _run("inspect", sd15_export["paths"]["diffusers"].parent, "--json")
    summary = json.loads(as_json.output)
    parsed = lora.read_lora(kohya)
    assert summary["format"] == "diffusers" and summary["modules"] == len(parsed.modules)
    assert summary["modules_per_block"] == parsed.block_counts()
    assert summary["alphas"] == [1.0, 8.0] and summary["alpha_varies"]
    assert summary["metadata"]["lorastudio.config_hash"] == "cafe"


def test_pickle_files_need_the_explicit_flag(sd15_export, tmp_path):
    with safe_open(str(sd15_export["paths"]["kohya"]), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    ckpt = tmp_path / "old.ckpt"
    torch.save(tensors, ckpt)
    refused = _run("inspect", ckpt)
    assert refused.exit_code != 0 and "--allow-pickle" in refused.output
    refused_export = _run("export", ckpt, "--to", "kohya", "--out", tmp_path / "x.safetensors")
    assert refused_export.exit_code != 0 and not (tmp_path / "x.safetensors").exists()
    allowed = _run("inspect", ckpt, "--allow-pickle", "--json")
    assert allowed.exit_code == 0 and json.loads(allowed.output)["format"] == "kohya"


def test_clear_errors_for_bad_inputs(tmp_path):
    not_lora = tmp_path / "weights.safetensors"
    from safetensors.torch import save_file

    save_file({"model.weight": torch.zeros(2)}, str(not_lora))
    result = _run("inspect", not_lora)
    assert result.exit_code != 0 and "neither kohya" in result.output
    text = tmp_path / "notes.txt"
    text.write_text("hi")
    assert ".safetensors" in _run("inspect", text).output


def test_base_folder_must_hold_a_unet_config(sd15_export, tmp_path):
    result = _run("export", sd15_export["paths"]["kohya"], "--to", "kohya", "--out", tmp_path / "o.safetensors",
                  "--base", tmp_path)
    assert result.exit_code != 0 and "unet/config.json" in result.output
