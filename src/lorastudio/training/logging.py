"""Run metrics: `metrics.jsonl` always, TensorBoard events when tensorboard is installed,
and a tqdm progress bar with smoothed loss, lr, s/it and ETA."""

from __future__ import annotations

import importlib.util
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

TB_HINT = "TensorBoard logging is off: pip install tensorboard (or 'lorastudio[tensorboard]') to get event files."


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_gpu_mb() -> float | None:
    """Peak CUDA memory in MB, or None without a GPU."""
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


class MetricsLogger:
    """Appends JSON rows (training rows hold "loss"; validation rows "val_loss"; leak rows "leak");
    mirrors scalars, and one level of dicts as `key/name`, to TensorBoard if present."""

    def __init__(self, run_dir: Path, *, tensorboard: bool, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if enabled and tensorboard:
            if importlib.util.find_spec("tensorboard") is not None:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            else:
                print(TB_HINT, file=sys.stderr)

    def log(self, row: dict[str, Any]) -> None:
        """Write one row (must hold `step`); flushed at once so a crash loses nothing."""
        if not self.enabled:
            return
        row = {"time": round(time.time(), 3), **row}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("step", "time"):
                    self.tb.add_scalar(key, value, row["step"])
                elif isinstance(value, dict):  # e.g. {"leak": {"black": 0.5}} -> leak/black
                    for name, inner in value.items():
                        if isinstance(inner, (int, float)):
                            self.tb.add_scalar(f"{key}/{name}", inner, row["step"])
            self.tb.flush()

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self.tb is not None:
            self.tb.close()


class Smoothed:
    """Exponential moving average that ignores non-finite values."""

    def __init__(self, beta: float = 0.9) -> None:
        self.beta = beta
        self.value: float | None = None

    def update(self, x: float) -> float | None:
        """Add a value; returns the smoothed value."""
        if x == x and abs(x) != float("inf"):
            self.value = x if self.value is None else self.beta * self.value + (1 - self.beta) * x
        return self.value


class Progress:
    """The step progress bar; s/it and ETA come from tqdm's own rate estimate."""

    def __init__(self, total: int, initial: int, *, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", disable=not enabled, dynamic_ncols=True)

    def update(self, loss: float | None, lr: float) -> None:
        """Advance one step and show the smoothed loss and lr."""
        self.bar.set_postfix(loss="nan" if loss is None else f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        self.bar.update(1)

    def write(self, message: str) -> None:
        """Print a line above the bar."""
        self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()
