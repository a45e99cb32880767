"""Helpers for the Flux tests: configs, a seeded LoRA on the tiny transformer, ΔW tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def flux_config(model_dir: Path, dataset: Path, out: Path, cache_dir: Path, **sections: dict) -> dict:
    """A small fp32 Flux training config as a plain dict."""
    from train_helpers import base_config

    cfg = base_config(model_dir, dataset, out, cache_dir, family="flux", model={"dtype": "float32"},
                      train={"mixed_precision": "no"}, network={"targets": "all_linear"})
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values} if isinstance(values, dict) else values
    return cfg


def attach_random_lora(transformer: Any, preset: str, rank: int = 4, alpha: float = 2.0, seed: int = 1) -> None:
    """A LoRA with random A and B (visible effect), alpha != rank."""
    from lorastudio.models.families import get_family
    from lorastudio.models.lora import attach_lora

    targets = get_family("flux").target_modules(transformer, preset)
    torch.manual_seed(seed)
    attach_lora(transformer, rank=rank, alpha=alpha, target_modules=targets, init_lora_weights=False)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.1)


def peft_deltas(transformer: Any) -> dict[str, torch.Tensor]:
    """ΔW = scaling · B @ A of every LoRA layer, read straight from PEFT (the truth)."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, layer in transformer.named_modules():
        if isinstance(layer, LoraLayer) and "default" in layer.lora_A:
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            out[name] = (layer.scaling["default"] * b.float() @ a.float()).detach()
    return out
