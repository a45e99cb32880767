"""Never lose work: resume equality, corrupt checkpoints, changed configs, NaN, full disk."""

from __future__ import annotations

import json
import shutil

import torch
from train_helpers import adapter_tensors, base_config, read_metrics, run_cli, write_config

from lorastudio.training import checkpoint as ckpt_mod


def _train(tmp_path, cfg, name, *extra):
    return run_cli(["train", str(write_config(tmp_path / f"{name}.yaml", cfg)), "--no-progress", *extra])


def test_killed_and_resumed_run_equals_straight_run(tmp_path, dataset_dir, tiny_sd15_dir):
    common = {"train": {"max_steps": 6, "scheduler": "cosine", "warmup_steps": 2, "min_snr_gamma": 5.0, "noise_offset": 0.05},
              "data": {"flip": True, "shuffle": True, "tag_dropout": 0.2}, "save": {"every_n_steps": None}}
    straight = base_config(tiny_sd15_dir, dataset_dir, tmp_path / "straight", tmp_path / "cache", **common)
    assert _train(tmp_path, straight, "straight").exit_code == 0

    resumed = base_config(tiny_sd15_dir, dataset_dir, tmp_path / "resumed", tmp_path / "cache", **common)
    resumed["train"]["debug_stop_after_step"] = 3
    first = _train(tmp_path, resumed, "resumed")
    assert first.exit_code == 130
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["step_3"]
    assert not (tmp_path / "resumed" / "final").exists()
    del resumed["train"]["debug_stop_after_step"]
    second = _train(tmp_path, resumed, "resumed", "--resume", "auto")
    assert second.exit_code == 0, second.output
    assert "resumed from" in second.output and "at step 3" in second.output

    a = adapter_tensors(tmp_path / "straight" / "checkpoints" / "step_6" / "trainer_state" / "adapter.safetensors")
    b = adapter_tensors(tmp_path / "resumed" / "checkpoints" / "step_6" / "trainer_state" / "adapter.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed adapter differs from the straight run"
    losses_a = [r["loss"] for r in read_metrics(tmp_path / "straight")]
    losses_b = [r["loss"] for r in read_metrics(tmp_path / "resumed")]
    assert losses_a == losses_b


def test_resume_skips_corrupt_checkpoint_and_refuses_changed_config(tmp_path, dataset_dir, tiny_sd15_dir):
    run = tmp_path / "run"
    cfg = base_config(tiny_sd15_dir, dataset_dir, run, tmp_path / "cache", train={"max_steps": 4}, save={"every_n_steps": 1, "keep_last": 3})
    assert _train(tmp_path, cfg, "cfg").exit_code == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_2", "step_3", "step_4"]
    # Damage the newest: resume must fall back to step_3 with a warning.
    with open(run / "checkpoints" / "step_4" / "trainer_state" / "adapter.safetensors", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\xff\xff\xff\xff")
    (run / "checkpoints" / "step_2" / "COMPLETE.json").unlink()
    assert ckpt_mod.latest_valid(run, warn=lambda m: None).name == "step_3"

    changed = json.loads(json.dumps(cfg))
    changed["train"]["lr"] = 5e-4
    changed["network"]["rank"] = 8
    refused = _train(tmp_path, changed, "changed", "--resume", "auto")
    assert refused.exit_code != 0
    assert "skipping checkpoint" in refused.output and "does not match its sha256" in refused.output
    assert "train.lr: 0.001 -> 0.0005" in refused.output and "network.rank: 4 -> 8" in refused.output and "--force" in refused.output

    changed["network"]["rank"] = 4
    changed["train"]["max_steps"] = 5
    bad = _train(tmp_path, changed, "changed", "--resume", str(run / "checkpoints" / "step_4"), "--force")
    assert bad.exit_code != 0 and "cannot use this checkpoint" in bad.output
    forced = _train(tmp_path, changed, "changed", "--resume", str(run / "checkpoints" / "step_3"), "--force")
    assert forced.exit_code == 0, forced.output
    assert "at step 3" in forced.output
    assert ckpt_mod.verify(run / "checkpoints" / "step_5") is None


def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path, dataset_dir, tiny_sd15_dir):
    run = tmp_path / "run"
    cfg = base_config(tiny_sd15_dir, dataset_dir, run, tmp_path / "cache", train={"max_steps": 4, "debug_nan_at_steps": [2]})
    result = _train(tmp_path, cfg, "one")
    assert result.exit_code == 0
    assert "non-finite loss or gradient norm, update skipped" in result.output
    rows = read_metrics(run)
    assert rows[1]["loss"] is None and rows[-1]["skipped_steps"] == 1
    saved = adapter_tensors(run / "final" / "lora.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())

    run2 = tmp_path / "run2"
    cfg2 = base_config(tiny_sd15_dir, dataset_dir, run2, tmp_path / "cache",
                       train={"max_steps": 10, "debug_nan_at_steps": [3, 4, 5], "max_nonfinite_steps": 3}, save={"every_n_steps": 2})
    stopped = _train(tmp_path, cfg2, "two")
    assert stopped.exit_code == 1
    assert "3 non-finite steps in a row at step 5" in stopped.output
    assert sorted(p.name for p in (run2 / "checkpoints").iterdir()) == ["step_2", "step_4"]
    assert not (run2 / "final").exists()


def test_full_disk_keeps_previous_checkpoint(tmp_path, dataset_dir, tiny_sd15_dir, monkeypatch):
    run = tmp_path / "run"
    cfg = base_config(tiny_sd15_dir, dataset_dir, run, tmp_path / "cache", train={"max_steps": 6}, save={"every_n_steps": 2})
    real = shutil.disk_usage

    def shrinking_disk(path):
        usage = real(path)
        # Plenty of room for the first checkpoint, then the disk is "full".
        full = (run / "checkpoints" / "step_2").exists()
        return usage._replace(free=1000 if full else usage.free)

    monkeypatch.setattr(ckpt_mod.shutil, "disk_usage", shrinking_disk)
    result = _train(tmp_path, cfg, "cfg")
    assert result.exit_code == 1
    assert "not enough free disk space" in result.output and "--resume auto" in result.output
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_2"]
    assert ckpt_mod.verify(run / "checkpoints" / "step_2") is None
