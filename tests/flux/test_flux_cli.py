"""Every user-facing command for Flux, through the real `lorastudio` entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from flux_helpers import flux_config
from PIL import Image
from safetensors.torch import load_file
from train_helpers import run_cli, write_config


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, flux_dev_dir):
    """A 2-step Flux run with sample prompts (attn preset, alpha != rank)."""
    from train_helpers import make_dataset

    root = tmp_path_factory.mktemp("flux_cli")
    data = make_dataset(root / "ds", [(32, 32)] * 2)
    cfg = flux_config(flux_dev_dir, data, root / "run", root / "cache", train={"max_steps": 2, "lr": 1e-2},
                      network={"targets": "attn", "rank": 4, "alpha": 2.0}, save={"every_n_steps": 1},
                      sample={"prompts": ["ohwx_kfood_style, a photo of bibimbap"], "width": 32, "height": 32, "steps": 2,
                              "every_n_steps": 2, "at_start": True})
    result = run_cli(["train", str(write_config(root / "cfg.yaml", cfg)), "--no-progress", "--skip-audit"])
    assert result.exit_code == 0, result.output
    return root / "run"


def test_make_tiny_and_init_config(tmp_path):
    made = run_cli(["make-tiny", str(tmp_path / "schnell"), "--family", "flux", "--variant", "schnell"])
    assert made.exit_code == 0, made.output
    assert json.loads((tmp_path / "schnell" / "transformer" / "config.json").read_text())["guidance_embeds"] is False
    assert json.loads((tmp_path / "schnell" / "lorastudio_model.json").read_text())["variant"] == "schnell"
    printed = run_cli(["init-config", "--family", "flux"])
    assert printed.exit_code == 0
    cfg = yaml.safe_load(printed.output)
    assert cfg["model"]["family"] == "flux" and cfg["flux"]["sigma_sampling"] == "flux_shift"
    assert cfg["flux"]["guidance"] == 1.0 and cfg["sample"]["cfg"] == 3.5 and cfg["sample"]["steps"] == 28
    schnell = yaml.safe_load(run_cli(["init-config", "--family", "flux", "--variant", "schnell"]).output)
    assert schnell["flux"]["variant"] == "schnell" and schnell["sample"]["steps"] == 4 and schnell["sample"]["cfg"] == 0.0
    assert schnell["model"]["path"] == "black-forest-labs/FLUX.1-schnell"


def test_training_samples_render_through_the_flux_pipeline(trained_run):
    pngs = sorted(p.relative_to(trained_run).as_posix() for p in (trained_run / "samples").rglob("*.png"))
    assert pngs == ["samples/step_0/00.png", "samples/step_2/00.png"]
    before = np.asarray(Image.open(trained_run / pngs[0]), dtype=np.float32)
    after = np.asarray(Image.open(trained_run / pngs[1]), dtype=np.float32)
    assert before.shape == (32, 32, 3) and np.abs(before - after).max() > 0


def test_inspect_reports_format_and_coverage(trained_run):
    result = run_cli(["inspect", str(trained_run / "final" / "lora.safetensors"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["format"] == "flux" and summary["family"] == "flux"
    assert summary["modules"] == 2 * 12 + 2 * 3 and summary["alpha"] == 2.0
    assert "every key mapped" in summary["coverage"]
    assert summary["metadata"]["modelspec.architecture"] == "flux-1-dev/lora"
    text = run_cli(["inspect", str(trained_run / "final" / "lora.safetensors")]).output
    assert "format:  flux (family flux)" in text and "keys:    kohya:" in text and "every key mapped" in text


def test_export_round_trip_keeps_every_delta(trained_run, tmp_path):
    from lorastudio.models.flux_formats import read_flux_file

    source = trained_run / "final" / "lora.safetensors"
    out = tmp_path / "conv"
    result = run_cli(["export", str(source), "--to", "diffusers", "--out", str(out)])
    assert result.exit_code == 0, result.output
    back = tmp_path / "back.safetensors"
    assert run_cli(["export", str(out), "--to", "kohya", "--out", str(back)]).exit_code == 0
    a, _, _ = read_flux_file(source)
    b, _, meta = read_flux_file(back)
    deltas = {m.path: m.delta() for m in a}
    assert {m.path for m in b} == set(deltas)
    assert all(torch.allclose(m.delta(), deltas[m.path], atol=1e-6) for m in b)
    assert meta["modelspec.architecture"] == "flux-1-dev/lora" and meta["ss_guidance_scale"] == "1.0"


def test_generate_with_a_kohya_flux_lora_changes_the_image(trained_run, flux_dev_dir, tmp_path):
    common = ["generate", "--model", str(flux_dev_dir), "--prompt", "ohwx_kfood_style, a photo of bibimbap", "--steps", "2",
              "--cfg", "3.5", "--size", "32x32", "--no-progress"]
    base = run_cli([*common, "--out", str(tmp_path / "base")])
    styled = run_cli([*common, "--lora", f"{trained_run / 'final' / 'lora.safetensors'}:1.0", "--out", str(tmp_path / "lora")])
    assert base.exit_code == 0 and styled.exit_code == 0, styled.output
    files_a = sorted((tmp_path / "base").glob("*.png"))
    files_b = sorted((tmp_path / "lora").glob("*.png"))
    assert len(files_a) == len(files_b) == 1
    a = np.asarray(Image.open(files_a[0]), dtype=np.float32)
    b = np.asarray(Image.open(files_b[0]), dtype=np.float32)
    assert a.shape == (32, 32, 3) and np.abs(a - b).max() > 0


def test_enhance_restyles_a_photo_with_flux_img2img(trained_run, flux_dev_dir, tmp_path):
    photo = tmp_path / "dish.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(photo)
    result = run_cli(["enhance", str(photo), "--model", str(flux_dev_dir), "--lora", str(trained_run / "final"),
                      "--prompt", "ohwx_kfood_style, a photo of bibimbap", "--steps", "4", "--cfg", "3.5",
                      "--resolution", "32", "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    out = Image.open(tmp_path / "out" / "dish.png")
    assert out.size == (48, 40)


def test_sample_grid_for_a_flux_run(trained_run, tmp_path):
    result = run_cli(["sample", str(trained_run), "--scales", "0,1", "--checkpoints", "last", "--steps", "2",
                      "--cfg", "3.5", "--size", "32x32", "--out", str(tmp_path / "grid"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "grid").glob("grid-*.png"))


def test_a_lora_for_another_model_size_fails_in_one_line(trained_run, flux_dev_dir, tmp_path):
    lora = load_file(str(trained_run / "final" / "lora_peft_alpha_baked.safetensors"))
    wrong = {k: torch.zeros(v.shape[0], v.shape[1] + 1) if k.endswith("lora_A.weight") else v for k, v in lora.items()}
    from safetensors.torch import save_file

    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    result = run_cli(["generate", "--model", str(flux_dev_dir), "--prompt", "x", "--steps", "1", "--size", "32x32",
                      "--lora", str(tmp_path / "wrong.safetensors"), "--out", str(tmp_path / "o"), "--no-progress"])
    assert result.exit_code != 0 and "do not fit this FLUX.1 model" in result.output


def test_evaluate_scores_a_flux_run(trained_run):
    result = run_cli(["evaluate", str(trained_run), "--scales", "1", "--checkpoints", "last", "--steps", "2",
                      "--size", "32x32", "--no-report", "--no-progress"])
    assert result.exit_code == 0, result.output
    data = json.loads((trained_run / "evaluation.json").read_text())
    assert [(r["checkpoint"], r["scale"]) for r in data["rows"]] == [("final", 1.0)]
    assert data["recommendation"]["checkpoint"] == "final"
