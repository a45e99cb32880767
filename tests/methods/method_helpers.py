"""Helpers for the method tests: the training tests' dataset and config writers, plus a
method config, a run wrapper and the format-contract checkers of A1111 and ComfyUI."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

from train_helpers import adapter_tensors, base_config, make_dataset, read_metrics, run_cli, write_config  # noqa: E402

__all__ = ["adapter_tensors", "base_config", "make_dataset", "read_metrics", "run_cli", "write_config", "method_config", "train"]

TRIGGER = "ohwx_kfood_style"


def method_config(model_dir: Path, dataset: Path, out: Path, cache: Path, method: str, family: str = "sd15", **sections: dict) -> dict:
    """A small config for `method` (ti / pivotal / dreambooth), no periodic checkpoints."""
    extra = {"train": {"method": method, "max_steps": 4, "mixed_precision": "no"}, "save": {"every_n_steps": None}}
    if method in ("ti", "pivotal"):
        extra["ti"] = {"trigger": TRIGGER, "num_vectors": 2, "init": "food", "lr": 5e-2}
    for name, values in sections.items():
        extra[name] = {**extra.get(name, {}), **values}
    return base_config(model_dir, dataset, out, cache, family=family, **extra)


def train(tmp_path: Path, cfg: dict, name: str, *extra: str):
    """Run `lorastudio train` on `cfg` (audit skipped: the images are noise)."""
    return run_cli(["train", str(write_config(tmp_path / f"{name}.yaml", cfg)), "--no-progress", "--skip-audit", *extra])
