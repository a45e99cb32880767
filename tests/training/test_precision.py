"""`train.mixed_precision: auto`: bf16 only where it pays (an SD-size UNet on bf16 hardware)."""

from __future__ import annotations

import json

import pytest
from train_helpers import base_config, make_dataset, write_config

from lorastudio.config.loader import load_config
from lorastudio.config.train import TrainConfig
from lorastudio.training import preflight


def _cfg(tmp_path, model_dir, precision=None):
    dataset = make_dataset(tmp_path / "ds", [(32, 32)])
    train = {"mixed_precision": precision} if precision else {}
    raw = base_config(model_dir, dataset, tmp_path / "run", tmp_path / "cache", train=train)
    return load_config(TrainConfig, write_config(tmp_path / "cfg.yaml", raw))


def _sd_size_folder(tmp_path, widths):
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text(json.dumps({"block_out_channels": widths}))
    return folder


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("lorastudio.environment.cpu_bf16_flags", lambda: ["avx512_bf16"])


def test_auto_is_the_default_and_picks_bf16_for_an_sd_size_unet_on_a_bf16_cpu(tmp_path, cpu_with_bf16):
    cfg = _cfg(tmp_path, _sd_size_folder(tmp_path, [320, 640, 1280, 1280]))
    assert cfg.train.mixed_precision == "auto"
    assert preflight.resolve_mixed_precision(cfg) == "bf16"


def test_auto_stays_fp32_for_small_models_unknown_models_and_cpus_without_bf16(tmp_path, cpu_with_bf16, monkeypatch, tiny_sd15_dir):
    # The toy-size UNet: casts cost more than they save.
    assert preflight.resolve_mixed_precision(_cfg(tmp_path / "a", tiny_sd15_dir)) == "no"
    # A hub id that is not in the cache: no size to go by.
    unknown = _cfg(tmp_path / "b", tiny_sd15_dir).model_copy(deep=True)
    unknown.model.path = "someone/not-cached-model"
    assert preflight.resolve_mixed_precision(unknown) == "no"
    # An SD-size UNet on a CPU without bf16 instructions.
    monkeypatch.setattr("lorastudio.environment.cpu_bf16_flags", lambda: [])
    assert preflight.resolve_mixed_precision(_cfg(tmp_path / "c", _sd_size_folder(tmp_path / "c", [320, 640, 1280]))) == "no"


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_an_explicit_precision_is_kept(tmp_path, cpu_with_bf16, tiny_sd15_dir, precision):
    assert preflight.resolve_mixed_precision(_cfg(tmp_path, tiny_sd15_dir, precision)) == precision
