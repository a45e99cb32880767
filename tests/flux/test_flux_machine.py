"""GPU-only Flux options on a CPU, the memory estimate before loading, 16-pixel buckets."""

from __future__ import annotations

import pytest
from flux_helpers import flux_config
from train_helpers import make_dataset, run_cli, write_config

from lorastudio.config.train import TrainConfig
from lorastudio.models.flux_memory import FLUX1, estimate, lora_params, transformer_params


@pytest.mark.parametrize(("override", "message"), [
    ({"model": {"dtype": "bfloat16"}}, "model.dtype=bfloat16 (bf16 base weights) needs a CUDA GPU"),
    ({"flux": {"quantize_base": "nf4"}}, "flux.quantize_base=nf4 needs a CUDA GPU"),
    ({"train": {"optimizer": "adamw8bit"}}, "adamw8bit"),
])
def test_gpu_only_options_fail_on_cpu_in_one_line(tmp_path, flux_dataset, flux_dev_dir, override, message):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = flux_config(flux_dev_dir, flux_dataset, tmp_path / "run", tmp_path / "cache")
    for section, values in override.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    result = run_cli(["train", str(write_config(tmp_path / "c.yaml", cfg)), "--no-progress", "--skip-audit"])
    assert result.exit_code != 0 and message in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1 and not (tmp_path / "run" / "checkpoints").exists()


def test_memory_estimate_is_printed_before_loading(tmp_path, flux_dataset, flux_dev_dir):
    cfg = flux_config(flux_dev_dir, flux_dataset, tmp_path / "run", tmp_path / "cache", train={"max_steps": 1})
    result = run_cli(["train", str(write_config(tmp_path / "c.yaml", cfg)), "--no-progress", "--skip-audit"])
    assert result.exit_code == 0
    out = result.output
    assert "memory estimate (CPU)" in out and out.index("memory estimate") < out.index("latent cache")


def test_flux1_dev_estimate_matches_the_published_size(tmp_path):
    assert transformer_params(FLUX1) / 1e9 == pytest.approx(11.9, abs=0.05)
    # diffusers' default targets at rank 16: 12 + 3 modules per block
    assert lora_params(FLUX1, 16, "attn") / 1e6 == pytest.approx(16 * 3072 * (36 * 19 + 6 * 38) / 1e6)
    cfg = TrainConfig.model_validate({"model": {"family": "flux", "path": str(tmp_path / "hub-id"), "dtype": "bfloat16"},
                                      "flux": {"quantize_base": "nf4"}, "train": {"gradient_checkpointing": True}})
    est = estimate(cfg, 512)
    assert est.base == pytest.approx(11.9e9 * 0.56 / 1024**3, rel=0.01)  # about 6.2 GB in nf4
    assert est.base + est.lora_states + est.activations < 24


def test_images_must_be_multiples_of_16(tmp_path, flux_dev_dir):
    data = make_dataset(tmp_path / "ds", [(40, 32)])
    cfg = flux_config(flux_dev_dir, data, tmp_path / "run", tmp_path / "cache")
    result = run_cli(["train", str(write_config(tmp_path / "c.yaml", cfg)), "--no-progress", "--skip-audit"])
    assert result.exit_code != 0 and "not a multiple of 16" in result.output


def test_family_mismatch_is_reported_before_loading(tmp_path, flux_dataset, flux_dev_dir, tiny_sd15_dir):
    from lorastudio.models.families import detect_family

    assert detect_family(str(flux_dev_dir)) == "flux" and detect_family(str(tiny_sd15_dir)) == "sd"
    cfg = flux_config(tiny_sd15_dir, flux_dataset, tmp_path / "a", tmp_path / "cache")
    wrong_base = run_cli(["train", str(write_config(tmp_path / "a.yaml", cfg)), "--no-progress", "--skip-audit"])
    assert wrong_base.exit_code != 0 and "holds SD1.x/2.x weights but model.family is 'flux'" in wrong_base.output
    cfg = flux_config(flux_dev_dir, flux_dataset, tmp_path / "b", tmp_path / "cache", model={"family": "sd15"})
    wrong_family = run_cli(["train", str(write_config(tmp_path / "b.yaml", cfg)), "--no-progress", "--skip-audit"])
    assert wrong_family.exit_code != 0 and "holds FLUX.1 weights" in wrong_family.output and "model.family=flux" in wrong_family.output
