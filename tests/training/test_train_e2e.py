"""End-to-end `lorastudio train` runs on tiny real models."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
import yaml
from train_helpers import adapter_tensors, base_config, make_dataset, read_metrics, run_cli, write_config

from lorastudio.training.checkpoint import verify
from lorastudio.training.logging import TB_HINT

SAMPLE = {"at_start": True, "every_n_steps": 2, "prompts": [{"prompt": "ohwx_kfood_style, a bowl of soup", "width": 32, "height": 32, "steps": 2, "seed": 3}]}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_train_writes_every_output(tmp_path, dataset_dir, family, request):
    model = request.getfixturevalue(f"tiny_{family}_dir")
    run = tmp_path / "run"
    cfg = base_config(model, dataset_dir, run, tmp_path / "cache", family=family, sample=SAMPLE, data={"flip": True},
                      logging={"tensorboard": True})
    result = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", cfg)), "--no-progress"])
    assert result.exit_code == 0, result.output
    if importlib.util.find_spec("tensorboard") is None:
        assert TB_HINT in result.output
    else:
        assert any((run / "tensorboard").iterdir())

    resolved = yaml.safe_load((run / "config.resolved.yaml").read_text())
    assert resolved["model"]["family"] == family and resolved["train"]["max_steps"] == 4
    rows = [r for r in read_metrics(run) if "loss" in r]  # training rows; the others are leak rows (validation.leak)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 and r["peak_rss_mb"] > 0 for r in rows)
    assert {"lr", "grad_norm", "s_per_step", "images_per_s"} <= set(rows[0])

    steps = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert steps == ["step_2", "step_4"]
    for ckpt in (run / "checkpoints").iterdir():
        assert verify(ckpt) is None
        assert (ckpt / "lora.safetensors").is_file() and (ckpt / "diffusers" / "pytorch_lora_weights.safetensors").is_file()
        assert (ckpt / "trainer_state" / "optimizer.safetensors").is_file()
    assert verify(run / "final") is None
    complete = json.loads((run / "final" / "COMPLETE.json").read_text())
    assert "lora.safetensors" in complete["files"]
    assert sorted(p.parent.name for p in (run / "samples").rglob("*.png")) == ["step_0", "step_2", "step_4"]

    kohya = adapter_tensors(run / "final" / "lora.safetensors")
    prefix = "lora_unet_"
    ups = [v for k, v in kohya.items() if k.startswith(prefix) and k.endswith("lora_up.weight")]
    assert ups and all(torch.isfinite(u).all() for u in ups)
    # LoRA B starts at zero; after training it must have moved.
    assert max(float(u.abs().max()) for u in ups) > 0


def test_final_adapter_changes_generation(tmp_path, dataset_dir, tiny_sd15_dir):
    from diffusers import StableDiffusionPipeline

    from lorastudio.evaluation.generation import GenerationRequest, generate

    run = tmp_path / "run"
    cfg = base_config(tiny_sd15_dir, dataset_dir, run, tmp_path / "cache", train={"lr": 5e-2, "max_steps": 3}, save={"every_n_steps": None})
    assert run_cli(["train", str(write_config(tmp_path / "cfg.yaml", cfg)), "--no-progress"]).exit_code == 0
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    req = [GenerationRequest("ohwx_kfood_style, soup", seed=1, width=32, height=32, steps=2)]
    before = torch.from_numpy(np.asarray(generate(pipe, req)[0], dtype=np.float32))
    again = torch.from_numpy(np.asarray(generate(pipe, req)[0], dtype=np.float32))
    assert torch.equal(before, again)
    pipe.load_lora_weights(run / "final" / "diffusers")
    after = torch.from_numpy(np.asarray(generate(pipe, req)[0], dtype=np.float32))
    assert (before - after).abs().mean() > 0.5


def test_disk_cache_is_reused_by_a_second_run(tmp_path, dataset_dir, tiny_sd15_dir):
    cache = tmp_path / "cache"
    for name in ("a", "b"):
        cfg = base_config(tiny_sd15_dir, dataset_dir, tmp_path / name, cache, train={"max_steps": 1}, save={"every_n_steps": None})
        result = run_cli(["train", str(write_config(tmp_path / f"{name}.yaml", cfg)), "--no-progress"])
        assert result.exit_code == 0
    assert "latent cache: 0 computed, 6 reused" in result.output
    assert "text cache: 0 computed, 4 reused" in result.output
    assert len(list((cache / "latents").rglob("*.safetensors"))) == 6


def test_caption_shuffle_disables_only_the_text_cache(tmp_path, dataset_dir, tiny_sd15_dir):
    reg = make_dataset(tmp_path / "reg", [(32, 32)] * 2, seed=1, captions=["a photo of food", "a photo of a dish"])
    cfg = base_config(tiny_sd15_dir, dataset_dir, tmp_path / "run", tmp_path / "cache",
                      train={"max_steps": None, "epochs": 1, "grad_accum": 2, "cache": "memory"},
                      data={"shuffle": True, "caption_dropout": 0.2, "regularization": str(reg), "prior_loss_weight": 0.5},
                      save={"every_n_steps": None})
    result = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", cfg)), "--no-progress"])
    assert result.exit_code == 0
    assert "text cache off" in result.output and "latent cache: 8 computed" in result.output
    assert "'reg_images': 2" in result.output and "4 batches/epoch; 2 steps" in result.output
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]
    assert not (tmp_path / "cache").exists()  # memory mode writes nothing


def test_sd2_trains_with_v_prediction_from_the_model(tmp_path, dataset_dir, tiny_sd2_dir):
    cfg = base_config(tiny_sd2_dir, dataset_dir, tmp_path / "run", tmp_path / "cache", family="sd2",
                      train={"max_steps": 2, "min_snr_gamma": 5.0}, save={"every_n_steps": None, "formats": ["kohya"]})
    result = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", cfg)), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "predicting v_prediction" in result.output
    assert all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path / "run"))
    assert (tmp_path / "run" / "final" / "lora.safetensors").is_file()
    assert not (tmp_path / "run" / "final" / "diffusers").exists()


def test_text_encoder_adapters_train_and_export(tmp_path, dataset_dir, tiny_sdxl_dir):
    cfg = base_config(tiny_sdxl_dir, dataset_dir, tmp_path / "run", tmp_path / "cache", family="sdxl",
                      network={"train_text_encoder": True, "text_encoder_rank": 2, "text_encoder_alpha": 2.0, "text_encoder_lr": 1e-2},
                      train={"max_steps": 2}, save={"every_n_steps": None})
    result = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", cfg)), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "text cache" not in result.output  # a trained text encoder is never cached
    kohya = adapter_tensors(tmp_path / "run" / "final" / "lora.safetensors")
    for prefix in ("lora_te1_", "lora_te2_"):
        ups = [v for k, v in kohya.items() if k.startswith(prefix) and k.endswith("lora_up.weight")]
        assert ups and max(float(u.abs().max()) for u in ups) > 0
        assert all(v.shape[0] == 2 for k, v in kohya.items() if k.startswith(prefix) and k.endswith("lora_down.weight"))
    groups = json.loads((tmp_path / "run" / "checkpoints" / "step_2" / "trainer_state" / "optimizer.json").read_text())["param_groups"]
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]
