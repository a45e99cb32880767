"""LoRA extraction: the low-rank part of (tuned - base), per layer, by SVD.

For every Linear and Conv2d whose weight changed, `delta = up @ down` with
`up = U_r * S_r`, `down = Vh_r` (alpha = rank, so the multiplier-1 delta is exactly the
rank-r truncation). A 3x3 conv gets `down` [r, in, 3, 3] and `up` [out, r, 1, 1] (LoCon,
which kohya, A1111 and ComfyUI read). A text encoder whose weights did not change (the usual
DreamBooth case) is skipped. Optional clamping to a quantile (kohya's 0.99) trades the
exactness of the reconstruction for smaller outliers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lorastudio.models.lora import LoraModule


@dataclass
class Extraction:
    """The extracted modules and what was skipped."""

    modules: list[LoraModule] = field(default_factory=list)
    unchanged_components: list[str] = field(default_factory=list)
    max_relative_error: float = 0.0


def _layers(model: Any) -> dict[str, Any]:
    import torch

    return {n: m for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def low_rank(diff: Any, rank: int, clamp_quantile: float | None) -> tuple[Any, Any, float]:
    """(up, down, relative error) of the best rank-`rank` approximation of a weight change."""
    import torch

    flat = diff.flatten(1).double()
    r = min(rank, *flat.shape)
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    up, down = u[:, :r] * s[:r], vh[:r]
    if clamp_quantile is not None:
        limit = torch.quantile(torch.cat([up.flatten(), down.flatten()]).abs().float(), clamp_quantile).item()
        up, down = up.clamp(-limit, limit), down.clamp(-limit, limit)
    error = ((up @ down - flat).norm() / flat.norm().clamp_min(1e-30)).item()
    if diff.ndim == 4:
        return up.float().reshape(diff.shape[0], r, 1, 1), down.float().reshape(r, *diff.shape[1:]), error
    return up.float(), down.float(), error


def extract(pairs: dict[str, tuple[Any, Any]], *, rank: int, conv_rank: int | None = None, min_diff: float = 1e-6,
            clamp_quantile: float | None = None) -> Extraction:
    """Extract per component ("unet", "text_encoder", "text_encoder_2") from (base, tuned) modules."""
    result = Extraction()
    for component, (base, tuned) in pairs.items():
        tuned_layers = _layers(tuned)
        changed = []
        for name, layer in _layers(base).items():
            diff = tuned_layers[name].weight.detach().float() - layer.weight.detach().float()
            if diff.abs().max().item() > min_diff:
                changed.append((name, diff))
        if not changed:
            result.unchanged_components.append(component)
            continue
        for name, diff in changed:
            r = conv_rank if diff.ndim == 4 and diff.shape[-1] > 1 and conv_rank else rank
            up, down, error = low_rank(diff, r, clamp_quantile)
            path = name if component == "unet" or name.startswith("text_model.") else f"text_model.{name}"
            result.modules.append(LoraModule(component, path, down.contiguous(), up.contiguous(), float(down.shape[0])))
            result.max_relative_error = max(result.max_relative_error, error)
    return result
