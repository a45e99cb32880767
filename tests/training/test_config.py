"""Config errors fail before any model loads and name the key or file."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from train_helpers import base_config, make_dataset, run_cli, write_config

from lorastudio.config.loader import load_config
from lorastudio.config.train import TrainConfig


def _fail(tmp_path: Path, cfg: dict, *extra: str) -> str:
    result = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", cfg)), "--no-progress", *extra])
    assert result.exit_code != 0
    assert not (Path(cfg["output_dir"]) / "checkpoints").exists()
    return result.output


def test_init_config_is_commented_and_round_trips(tmp_path):
    for family in ("sd15", "sdxl"):
        result = run_cli(["init-config", "--family", family, "--dataset", "ds"])
        assert result.exit_code == 0
        text = result.output
        assert "# LoRA rank of the UNet adapter" in text
        assert "min_snr_gamma" in text and "prior_loss_weight" in text
        cfg = load_config(TrainConfig, write_config(tmp_path / f"{family}.yaml", yaml.safe_load(text)))
        assert cfg.model.family == family
        assert cfg.data.datasets[0].path == Path("ds")


def test_unknown_key_and_bad_values_name_the_key(tmp_path, dataset_dir):
    cfg = base_config(tmp_path / "model", dataset_dir, tmp_path / "run", tmp_path / "cache")
    out = _fail(tmp_path, cfg, "train.max_step=10")
    assert "train.max_step: unknown key" in out and "did you mean 'train.max_steps'" in out
    assert "network.rank" in _fail(tmp_path, cfg, "network.rank=0")
    assert "network.targets" in _fail(tmp_path, cfg, "network.targets=attention")
    assert "train.scheduler" in _fail(tmp_path, cfg, "train.scheduler=cosine_annealing")


def test_machine_checks_run_before_model_load(tmp_path, dataset_dir):
    # model.path does not exist: the fp16/optimizer checks must fire first, naming their keys.
    cfg = base_config(tmp_path / "missing-model", dataset_dir, tmp_path / "run", tmp_path / "cache")
    assert "train.mixed_precision=fp16 needs a CUDA GPU" in _fail(tmp_path, cfg, "train.mixed_precision=fp16")
    assert "adamw8bit" in _fail(tmp_path, cfg, "train.optimizer=adamw8bit")
    assert "model.path" in _fail(tmp_path, cfg)


def test_sdxl_weights_with_sd15_family_are_refused(tmp_path, dataset_dir, tiny_sdxl_dir):
    cfg = base_config(tiny_sdxl_dir, dataset_dir, tmp_path / "run", tmp_path / "cache", family="sd15")
    out = _fail(tmp_path, cfg)
    assert "SDXL weights" in out and "model.family" in out


def test_uncaptioned_images_name_the_manifest(tmp_path, tiny_sd15_dir):
    ds = make_dataset(tmp_path / "ds", [(64, 64)] * 3, captions=["a, b", None, ""])
    cfg = base_config(tiny_sd15_dir, ds, tmp_path / "run", tmp_path / "cache")
    out = _fail(tmp_path, cfg)
    assert "manifest.jsonl" in out and "2 image(s) have no caption_text" in out and "lorastudio caption" in out


def test_manifest_paths_outside_the_dataset_are_refused(tmp_path, tiny_sd15_dir, dataset_dir):
    manifest = dataset_dir / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[0]["file"] = "../../etc/passwd"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = base_config(tiny_sd15_dir, dataset_dir, tmp_path / "run", tmp_path / "cache")
    assert "points outside the dataset dir" in _fail(tmp_path, cfg)


def test_existing_run_dir_is_not_overwritten_without_resume(tmp_path, dataset_dir, tiny_sd15_dir):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_5").mkdir(parents=True)
    cfg = base_config(tiny_sd15_dir, dataset_dir, run, tmp_path / "cache")
    result = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", cfg)), "--no-progress"])
    assert result.exit_code != 0
    assert "already holds checkpoints" in result.output and "--resume auto" in result.output
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_5"]
    assert not (run / "metrics.jsonl").exists()


def test_audit_gate_refuses_contaminated_dataset_unless_skipped(tmp_path, tiny_sd15_dir):
    # Every caption leaves the plain grey backdrop unsaid: a contaminant.
    bare = ["ohwx_kfood_style, a photo of bibimbap"] * 4
    dataset = make_dataset(tmp_path / "bare", [(32, 32)] * 4, captions=bare, scene="backdrop")
    cfg = base_config(tiny_sd15_dir, dataset, tmp_path / "run", tmp_path / "cache",
                      train={"max_steps": 1}, save={"every_n_steps": None})
    refused = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", cfg)), "--no-progress"])
    assert refused.exit_code == 1
    assert "contaminant" in refused.output and "--skip-audit" in refused.output and str(dataset) in refused.output
    assert not (tmp_path / "run" / "final").exists()
    skipped = run_cli(["train", str(tmp_path / "cfg.yaml"), "--no-progress", "--skip-audit"])
    assert skipped.exit_code == 0, skipped.output
    assert (tmp_path / "run" / "final" / "lora.safetensors").is_file()
