"""Trainer state: everything a resumed run needs to continue bit for bit.

`trainer_state/` holds the trainable adapter tensors, the optimizer and LR scheduler state
(safetensors + JSON, never pickle), the RNG states, the loop position and the config and
dataset fingerprints used to refuse a resume whose inputs changed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorastudio.config.train import RESUME_SAFE_KEYS
from lorastudio.training.optim import load_optimizer_state, save_state

if TYPE_CHECKING:
    import torch

STATE_DIR = "trainer_state"


class ResumeError(RuntimeError):
    """The checkpoint cannot be resumed as asked; the message says why and what to do."""


@dataclass
class LoopPosition:
    """Where the loop is: optimizer steps done and the next batch to read."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    nonfinite_streak: int = 0
    skipped_steps: int = 0


def trainable_tensors(named: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable parameters, by name."""
    return {name: p.detach().cpu().contiguous() for name, p in named.items()}


def save_trainer_state(
    folder: Path,
    *,
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    position: LoopPosition,
    config: dict[str, Any],
    dataset_fingerprint: str,
) -> None:
    """Write `folder/` (created) with every piece of resumable state."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(trainable_tensors(params), str(folder / "adapter.safetensors"))
    save_state(optimizer.state_dict(), folder, "optimizer")
    (folder / "scheduler.json").write_text(json.dumps(lr_scheduler.state_dict(), indent=1), encoding="utf-8")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda.{i}"] = state
    save_file(rng, str(folder / "rng.safetensors"))
    meta = {"position": asdict(position), "config": config, "dataset_fingerprint": dataset_fingerprint}
    (folder / "state.json").write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")


def read_meta(folder: Path) -> dict[str, Any]:
    """The position, config and dataset fingerprint stored in a trainer_state folder."""
    return json.loads((folder / "state.json").read_text(encoding="utf-8"))


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def config_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: old -> new` lines for every setting that changed, ignoring resume-safe keys."""
    old, new = _flatten(saved), _flatten(current)
    lines = []
    for key in sorted(set(old) | set(new)):
        if any(key == safe or key.startswith(safe + ".") for safe in RESUME_SAFE_KEYS):
            continue
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            lines.append(f"  {key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}")
    return lines


def check_compatible(meta: dict[str, Any], config: dict[str, Any], fingerprint: str, *, source: Path, force: bool) -> list[str]:
    """Refuse (ResumeError) a resume whose config or dataset changed, unless `force`.

    Returns the differences (empty when none) so a forced resume can log them.
    """
    diff = config_diff(meta["config"], config)
    if meta["dataset_fingerprint"] != fingerprint:
        diff.append("  dataset: images, captions, sizes or repeats changed")
    if diff and not force:
        raise ResumeError(
            f"refusing to resume from {source}: the config or dataset changed since it was written:\n"
            + "\n".join(diff)
            + "\nrestore the old settings, start a new output_dir, or pass --force to resume anyway"
        )
    return diff


def load_trainer_state(folder: Path, *, params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer, lr_scheduler: Any) -> LoopPosition:
    """Restore adapter weights, optimizer, LR scheduler and RNG; returns the loop position."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(folder / "adapter.safetensors"))
    missing = sorted(set(params) ^ set(saved))
    if missing:
        raise ResumeError(f"{folder}/adapter.safetensors does not match this network (first mismatch: {missing[0]}); check network.*")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(saved[name])
    load_optimizer_state(optimizer, folder)
    lr_scheduler.load_state_dict(json.loads((folder / "scheduler.json").read_text(encoding="utf-8")))
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        cuda_states = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda."))]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
    return LoopPosition(**read_meta(folder)["position"])
