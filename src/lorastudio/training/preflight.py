"""Checks that run before any model weights load: machine, model folder, datasets.

Each failure is a `PreflightError` whose message names the config key or file and says
what to do, so a bad config costs seconds, not a model load.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lorastudio.config.train import ModelSection, TrainConfig
from lorastudio.data.dataset import DatasetError, Item, load_all_items
from lorastudio.models.families import FamilyError, check_model_matches, get_family, is_single_file
from lorastudio.training.optim import OptimizerUnavailable, check_optimizer


class PreflightError(ValueError):
    """The run cannot start; the message names the key or file."""


def has_gpu() -> bool:
    """True when a CUDA device is usable."""
    import torch

    return torch.cuda.is_available()


# UNet widths from which bf16 autocast pays for itself on a CPU (SD1.5's is 1280); below it the
# casts cost more than the matmuls save (the toy model trains 0.8x as fast in bf16).
BF16_MIN_UNET_WIDTH = 640
BF16_MIN_SINGLE_FILE_BYTES = 1 << 30


def _unet_width(model_cfg: ModelSection) -> int | None:
    """The UNet's widest block from its config (folder or hub cache), None when not readable."""
    import json

    path = Path(model_cfg.path)
    if is_single_file(model_cfg.path):
        return BF16_MIN_UNET_WIDTH if path.stat().st_size >= BF16_MIN_SINGLE_FILE_BYTES else 0
    config = path / "unet" / "config.json"
    if not config.is_file():
        try:
            from huggingface_hub import hf_hub_download

            config = Path(hf_hub_download(model_cfg.path, "unet/config.json", revision=model_cfg.revision,
                                          local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached or not a hub id: no size to go by
            return None
    try:
        return max(json.loads(config.read_text(encoding="utf-8")).get("block_out_channels") or [0])
    except (OSError, ValueError, TypeError):
        return None


def resolve_mixed_precision(cfg: TrainConfig) -> str:
    """What `train.mixed_precision: auto` means on this machine for this model: bf16 or no."""
    if cfg.train.mixed_precision != "auto":
        return cfg.train.mixed_precision
    import torch

    from lorastudio.environment import cpu_bf16_flags

    fast = torch.cuda.is_bf16_supported() if has_gpu() else bool(cpu_bf16_flags())
    if not fast:
        return "no"
    return "bf16" if (_unet_width(cfg.model) or 0) >= BF16_MIN_UNET_WIDTH else "no"


def check_machine(cfg: TrainConfig) -> None:
    """Precision, dtype and optimizer choices this machine cannot run."""
    gpu = has_gpu()
    if cfg.train.mixed_precision == "fp16" and not gpu:
        raise PreflightError("train.mixed_precision=fp16 needs a CUDA GPU; on CPU use train.mixed_precision=no (or bf16)")
    if cfg.model.dtype == "float16" and not gpu:
        raise PreflightError("model.dtype=float16 is not supported for training on CPU; use model.dtype=float32")
    try:
        check_optimizer(cfg.train, has_gpu=gpu)
    except OptimizerUnavailable as exc:
        raise PreflightError(str(exc)) from None
    try:
        notes = get_family(cfg.model.family).configured(cfg).check_run(cfg, gpu)
    except ValueError as exc:
        raise PreflightError(str(exc)) from None
    for note in notes:
        print(note, file=sys.stderr)


def check_model_path(cfg: TrainConfig) -> None:
    """The model exists (when local) and belongs to `model.family`."""
    path = cfg.model.path
    looks_local = path.startswith((".", "/", "~")) or is_single_file(path) or Path(path).exists()
    if looks_local and not Path(path).exists():
        raise PreflightError(f"model.path {path} does not exist; give a diffusers folder, a .safetensors file or a hub id")
    try:
        check_model_matches(cfg.model)
    except FamilyError as exc:
        raise PreflightError(str(exc)) from None


def check_sampling(cfg: TrainConfig) -> None:
    """Sample sizes must be multiples of 8 (the VAE's downsampling)."""
    for i, prompt in enumerate(cfg.sample.prompts):
        for key in ("width", "height"):
            value = getattr(prompt, key) or getattr(cfg.sample, key)
            multiple = get_family(cfg.model.family).size_multiple
            if value % multiple:
                raise PreflightError(f"sample.prompts[{i}].{key}={value} must be a multiple of {multiple} for {cfg.model.family}")


def preflight(cfg: TrainConfig, *, audit: bool = True) -> list[Item]:
    """Run every check; returns the dataset items so the caller does not read them twice.

    The cheap checks come first; the dataset audit (`audit=True`) runs last, still before
    any model loads."""
    check_machine(cfg)
    check_model_path(cfg)
    check_sampling(cfg)
    try:
        items = load_all_items(cfg.data)
    except DatasetError as exc:
        raise PreflightError(str(exc)) from None
    for item in items:
        multiple = get_family(cfg.model.family).size_multiple
        if item.width % multiple or item.height % multiple:
            raise PreflightError(f"{item.image_path}: {item.width}x{item.height} is not a multiple of {multiple} "
                                 f"(needed by {cfg.model.family}); re-run `lorastudio prepare` with such buckets")
    if audit and int(os.environ.get("RANK", "0")) == 0:
        check_audit(cfg)
    return items


def check_audit(cfg: TrainConfig) -> None:
    """Audit every training dataset and refuse to start on errors (missing trigger, style
    contamination, ...). Regularization sets are exempt: their captions name the class,
    not the trigger."""
    from lorastudio.audit import audit_dataset
    from lorastudio.audit.report import format_text

    model_dir = Path(cfg.model.path) if cfg.model.path else None
    tokenizer_dir = model_dir if model_dir is not None and (model_dir / "tokenizer").is_dir() else None
    for entry in cfg.data.datasets:
        try:
            result = audit_dataset(entry.path, family=cfg.model.family, tokenizer_dir=tokenizer_dir)
        except (ValueError, OSError) as exc:
            raise PreflightError(f"audit of {entry.path} failed: {exc}") from None
        if result.has_errors:
            raise PreflightError(
                f"{format_text(result, limit=15)}\n\nthe audit found {result.counts()['error']} error(s) in "
                f"{entry.path}; fix them (`lorastudio audit {entry.path} --fix`) or start anyway with --skip-audit"
            )
