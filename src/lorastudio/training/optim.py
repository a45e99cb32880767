"""Optimizer and LR schedule construction, and their state as safetensors + JSON.

Optimizer state is split into its tensors (saved with safetensors) and everything else
(saved as JSON), so resuming never unpickles anything.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from lorastudio.config.train import TrainSection


class OptimizerUnavailable(RuntimeError):
    """The chosen optimizer cannot run here; the message says how to get it."""


def check_optimizer(train: TrainSection, *, has_gpu: bool) -> None:
    """Fail before any model loads when the optimizer cannot run on this machine."""
    if train.optimizer == "adamw8bit":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise OptimizerUnavailable("train.optimizer=adamw8bit needs bitsandbytes: pip install bitsandbytes (or use train.optimizer=adamw)")
        if not has_gpu:
            raise OptimizerUnavailable("train.optimizer=adamw8bit needs a CUDA GPU; on CPU use train.optimizer=adamw")
    if train.optimizer == "prodigy" and importlib.util.find_spec("prodigyopt") is None:
        raise OptimizerUnavailable("train.optimizer=prodigy needs prodigyopt: pip install prodigyopt (or use train.optimizer=adamw)")


def build_optimizer(groups: list[dict[str, Any]], train: TrainSection) -> torch.optim.Optimizer:
    """The optimizer over `groups` (each {"params": [...], "lr": float})."""
    import torch

    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "adamw8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(groups, lr=train.lr, weight_decay=train.weight_decay)
    from prodigyopt import Prodigy

    return Prodigy(groups, lr=train.lr, weight_decay=train.weight_decay)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, train: TrainSection, total_steps: int) -> Any:
    """A diffusers `get_scheduler` schedule over `total_steps` optimizer steps."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(train.scheduler, optimizer, num_warmup_steps=train.warmup_steps, num_training_steps=total_steps)


def _split(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors inside `value` by {"__tensor__": key}, collecting them in `tensors`."""
    import torch

    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(value, dict):
        return {str(k): _split(v, f"{prefix}.{k}", tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(value)]
    return value


def _join(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return tensors[value["__tensor__"]]
        return {k: _join(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    return value


def save_state(state: dict[str, Any], folder: Path, name: str) -> list[Path]:
    """Write a state dict as `<name>.safetensors` (tensors) + `<name>.json` (the rest)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(state, name, tensors)
    json_path = folder / f"{name}.json"
    json_path.write_text(json.dumps(skeleton, indent=1), encoding="utf-8")
    tensor_path = folder / f"{name}.safetensors"
    save_file(tensors, str(tensor_path))
    return [json_path, tensor_path]


def load_state(folder: Path, name: str) -> dict[str, Any]:
    """Read a state dict written by `save_state`. Integer keys of optimizer state come back as ints."""
    from safetensors.torch import load_file

    skeleton = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    tensors = load_file(str(folder / f"{name}.safetensors"))
    return _join(skeleton, tensors)


def load_optimizer_state(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Restore optimizer state saved with `save_state(optimizer.state_dict(), folder, "optimizer")`."""
    state = load_state(folder, "optimizer")
    # JSON turned the integer parameter ids into strings; torch matches them as ints.
    state["state"] = {int(k): v for k, v in state["state"].items()}
    optimizer.load_state_dict(state)
