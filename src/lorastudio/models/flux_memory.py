"""A memory estimate for a Flux LoRA run, printed before any weights load, and GPU-only checks.

Parameter counts come from the transformer config (a local folder's transformer/config.json,
else FLUX.1's published shape); the formulas count the Linear layers of diffusers'
FluxTransformer2DModel. Activations are a rough bound, labelled as such.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FLUX1 = {"num_layers": 19, "num_single_layers": 38, "num_attention_heads": 24, "attention_head_dim": 128,
         "joint_attention_dim": 4096, "pooled_projection_dim": 768, "in_channels": 64}
T5_XXL_PARAMS, CLIP_L_PARAMS, VAE_PARAMS = 4.76e9, 0.123e9, 0.084e9
BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "int8": 1.06, "nf4": 0.56}
GB = 1024**3


def transformer_config(model_path: str) -> dict[str, Any]:
    """The transformer config of a local folder, else FLUX.1's."""
    path = Path(model_path) / "transformer" / "config.json"
    if path.is_file():
        try:
            return {**FLUX1, **json.loads(path.read_text(encoding="utf-8"))}
        except (OSError, ValueError):
            pass
    return dict(FLUX1)


def transformer_params(c: dict[str, Any]) -> float:
    """Linear weights of FluxTransformer2DModel (double block 36·h², single 15·h², plus embedders)."""
    h = c["num_attention_heads"] * c["attention_head_dim"]
    embed = h * (2 * c["in_channels"] + c["joint_attention_dim"] + 256 * 2 + c["pooled_projection_dim"]) + 5 * h * h
    return 36 * h * h * c["num_layers"] + 15 * h * h * c["num_single_layers"] + embed


def lora_params(c: dict[str, Any], rank: int, preset: str | list[str]) -> float:
    """LoRA parameters of a preset (an explicit list is counted as all_linear, an upper bound)."""
    h = c["num_attention_heads"] * c["attention_head_dim"]
    per_double, per_single = {"attn": (36, 6), "attn_ff": (36, 16)}.get(preset if isinstance(preset, str) else "", (50, 21))
    return rank * h * (per_double * c["num_layers"] + per_single * c["num_single_layers"])


@dataclass
class MemoryEstimate:
    """GB figures of one run."""

    base: float
    encoders: float
    lora_states: float
    activations: float

    def line(self, where: str) -> str:
        """One line for the log."""
        training = self.base + self.lora_states + self.activations
        return (f"memory estimate ({where}): transformer {self.base:.1f} GB + LoRA/optimizer {self.lora_states:.2f} GB + "
                f"activations ~{self.activations:.1f} GB = ~{training:.1f} GB while training; ~{self.base + self.encoders:.1f} GB "
                f"while caching (T5 + CLIP + VAE {self.encoders:.1f} GB beside the transformer, released after)")


def estimate(cfg: Any, t5_len: int) -> MemoryEstimate:
    """Rough peak memory of `cfg`'s run at its largest bucket/sample size."""
    c = transformer_config(cfg.model.path)
    h = c["num_attention_heads"] * c["attention_head_dim"]
    weight_bytes = BYTES[cfg.flux.quantize_base] if cfg.flux.quantize_base != "none" else BYTES[cfg.model.dtype]
    base = transformer_params(c) * weight_bytes / GB
    encoders = (T5_XXL_PARAMS + CLIP_L_PARAMS + VAE_PARAMS) * BYTES[cfg.model.dtype] / GB
    per_param = 4 + 4 + (2 if cfg.train.optimizer == "adamw8bit" else 8)  # weight, grad, Adam moments
    lora = lora_params(c, cfg.network.rank, cfg.network.targets) * per_param / GB
    side = max(cfg.sample.width, cfg.sample.height, 512)
    tokens = (side // 16) ** 2 + t5_len
    act_bytes = 2 if cfg.train.mixed_precision == "bf16" or cfg.model.dtype == "bfloat16" else 4
    blocks = c["num_layers"] + c["num_single_layers"]
    # With checkpointing only block inputs are kept; without, roughly 12 h-wide tensors per block.
    per_block = 1 if cfg.train.gradient_checkpointing else 12
    activations = cfg.train.batch_size * tokens * h * act_bytes * blocks * per_block / GB
    return MemoryEstimate(base, encoders, lora, activations)


def gpu_only_problems(cfg: Any, has_gpu: bool) -> list[str]:
    """One line per setting that needs a CUDA GPU (or an extra) this machine lacks."""
    import importlib.util

    problems = []
    if not has_gpu and cfg.model.dtype == "bfloat16":
        problems.append("model.dtype=bfloat16 (bf16 base weights) needs a CUDA GPU for Flux; on CPU use model.dtype=float32")
    if cfg.flux.quantize_base != "none":
        if not has_gpu:
            problems.append(f"flux.quantize_base={cfg.flux.quantize_base} needs a CUDA GPU (bitsandbytes); on CPU use flux.quantize_base=none")
        elif importlib.util.find_spec("bitsandbytes") is None:
            problems.append(f"flux.quantize_base={cfg.flux.quantize_base} needs bitsandbytes: pip install bitsandbytes")
    return problems


def quantization_kwargs(quantize: str) -> dict[str, Any]:
    """`from_pretrained` keywords that load the transformer quantised by bitsandbytes."""
    if quantize == "none":
        return {}
    import torch
    from diffusers import BitsAndBytesConfig

    if quantize == "nf4":
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": config}
