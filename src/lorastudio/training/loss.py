"""Diffusion training targets and loss: epsilon / v-prediction, min-SNR, prior weighting.

Noise and timesteps are drawn per sample from a generator seeded by (seed, step, position
in the global batch). That makes a resumed run and an N-process run draw exactly what a
single uninterrupted run draws, without saving any generator state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def sample_noise(
    latents: torch.Tensor, positions: list[int], *, seed: int, step: int, num_timesteps: int, noise_offset: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample noise (with optional offset noise) and integer timesteps."""
    import torch

    noise, steps = noise_per_sample(
        latents, positions, seed=seed, step=step, noise_offset=noise_offset,
        draw=lambda gen: int(torch.randint(0, num_timesteps, (1,), generator=gen)),
    )
    return noise, torch.tensor(steps, device=latents.device, dtype=torch.long)


def noise_per_sample(
    latents: torch.Tensor, positions: list[int], *, seed: int, step: int, noise_offset: float,
    draw: Callable[[torch.Generator], Any],
) -> tuple[torch.Tensor, list[Any]]:
    """Noise for each sample from its own generator, then `draw(generator)` (its timestep or
    sigma) from the same generator, so both are fixed by (seed, step, position) alone."""
    import torch

    noises, drawn = [], []
    for sample, pos in zip(latents, positions, strict=True):
        gen = torch.Generator(device="cpu").manual_seed(hash_seed(seed, step, pos))
        noise = torch.randn(sample.shape, generator=gen, dtype=torch.float32)
        if noise_offset:
            # Offset noise: a per-channel constant shift teaches the model to change the
            # overall brightness, which plain Gaussian noise almost never asks of it.
            noise = noise + noise_offset * torch.randn((sample.shape[0], 1, 1), generator=gen)
        noises.append(noise)
        drawn.append(draw(gen))
    return torch.stack(noises).to(latents.device, latents.dtype), drawn


def hash_seed(seed: int, step: int, pos: int) -> int:
    """A 63-bit seed mixing the run seed, the optimizer step and the sample position."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}:{step}:{pos}".encode()).digest()[:8], "little") >> 1


def training_target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """What the UNet should output: the noise (epsilon) or the velocity (v_prediction)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type '{prediction_type}'")


def snr(scheduler: Any, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep."""
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas_cumprod / (1.0 - alphas_cumprod)


def diffusion_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    scheduler: Any,
    timesteps: torch.Tensor,
    prediction_type: str,
    min_snr_gamma: float | None,
    sample_weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted MSE: per-sample mean, times min-SNR and prior weights, averaged over the batch.

    Min-SNR (Hang et al. 2023) caps the weight of low-noise timesteps at gamma / SNR; for
    v-prediction the weight is divided by SNR + 1 because the v target already carries it.
    """
    import torch

    per_sample = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    weights = sample_weights.to(per_sample.device, per_sample.dtype)
    if min_snr_gamma is not None:
        ratio = snr(scheduler, timesteps)
        snr_weight = torch.clamp(ratio, max=min_snr_gamma) / ratio
        if prediction_type == "v_prediction":
            snr_weight = torch.clamp(ratio, max=min_snr_gamma) / (ratio + 1.0)
        weights = weights * snr_weight
    return (per_sample * weights).mean()
