"""Real processes: Ctrl-C / SIGTERM save and exit codes, and 2-process DDP training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from train_helpers import adapter_tensors, base_config, read_metrics, run_cli, write_config

from lorastudio.training.checkpoint import list_checkpoints, verify


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _start(cfg_path: Path, log: Path) -> subprocess.Popen:
    fh = open(log, "w")  # noqa: SIM115 - closed when the process is collected
    return subprocess.Popen([sys.executable, "-m", "lorastudio", "train", str(cfg_path), "--no-progress"], stdout=fh, stderr=subprocess.STDOUT, env=_env())


def _wait_for_steps(run: Path, proc: subprocess.Popen, steps: int, timeout: float = 240) -> None:
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= steps:
            return
        assert proc.poll() is None, "training exited before it could be interrupted"
        time.sleep(0.2)
    raise AssertionError("training did not reach the wanted step in time")


def test_interrupts_save_a_checkpoint_and_exit_with_signal_codes(tmp_path, dataset_dir, tiny_sd15_dir):
    cases = {"int": signal.SIGINT, "term": signal.SIGTERM}
    procs = {}
    for name in cases:
        cfg = base_config(tiny_sd15_dir, dataset_dir, tmp_path / name, tmp_path / f"cache-{name}", train={"max_steps": 100000}, save={"every_n_steps": None})
        procs[name] = _start(write_config(tmp_path / f"{name}.yaml", cfg), tmp_path / f"{name}.log")
    try:
        for name, sig in cases.items():
            _wait_for_steps(tmp_path / name, procs[name], 2)
            procs[name].send_signal(sig)
        codes = {name: proc.wait(timeout=240) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    assert codes == {"int": 130, "term": 143}, {n: (tmp_path / f"{n}.log").read_text()[-2000:] for n in cases}
    for name in cases:
        ckpts = list_checkpoints(tmp_path / name)
        assert len(ckpts) == 1 and verify(ckpts[0]) is None and ckpts[0].name != "step_0"
        assert "saving a checkpoint at the current step" in (tmp_path / f"{name}.log").read_text()
        assert not (tmp_path / name / "final").exists()


def test_two_process_ddp_matches_single_process(tmp_path, dataset_dir, tiny_sd15_dir):
    # Validation on: only the main process measures, and the other must not fall out of step.
    common = {"train": {"max_steps": 3}, "save": {"every_n_steps": None}, "validation": {"every_n_steps": 2, "images": 2}}
    single = base_config(tiny_sd15_dir, dataset_dir, tmp_path / "single", tmp_path / "cache", **common)
    assert run_cli(["train", str(write_config(tmp_path / "single.yaml", single)), "--no-progress"]).exit_code == 0

    ddp = base_config(tiny_sd15_dir, dataset_dir, tmp_path / "ddp", tmp_path / "cache", **common)
    ddp["train"]["batch_size"] = 1  # per process: the same global batch of 2
    cmd = [sys.executable, "-m", "lorastudio", "train", str(write_config(tmp_path / "ddp.yaml", ddp)), "--num-processes", "2", "--no-progress"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    a = adapter_tensors(tmp_path / "single" / "checkpoints" / "step_3" / "trainer_state" / "adapter.safetensors")
    b = adapter_tensors(tmp_path / "ddp" / "checkpoints" / "step_3" / "trainer_state" / "adapter.safetensors")
    assert a.keys() == b.keys()
    # LoRA B starts at zero, so its size is what 3 steps learned; the two runs must agree
    # far more closely than that (only the order of float sums differs).
    learned = max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k)
    assert learned > 1e-3
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=learned * 1e-2)
    val_a = [r for r in read_metrics(tmp_path / "single") if "val_loss" in r]
    val_b = [r for r in read_metrics(tmp_path / "ddp") if "val_loss" in r]
    assert [r["step"] for r in val_a] == [r["step"] for r in val_b] == [0, 2, 3]
    assert val_a[0]["val_loss"] == val_b[0]["val_loss"]  # the same images, noise and (untrained) model
    for ra, rb in zip(val_a, val_b, strict=True):
        assert abs(ra["val_loss"] - rb["val_loss"]) <= 1e-4 * ra["val_loss"]
