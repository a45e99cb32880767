"""Training objectives: what a family's denoiser is fed and what it must predict.

Two objectives, chosen by the family (never by the loop):
- `DDPMObjective` (SD1.x/2.x/SDXL): integer timesteps, `scheduler.add_noise`, epsilon or v target.
- `FlowMatchObjective` (Flux): a noise level sigma in [0, 1], `x_t = (1 - sigma) x0 + sigma n`,
  velocity target `n - x0`, sigma drawn logit-normal and shifted by the image's token count
  (BFL's dynamic shift), or uniform / plain logit-normal / a fixed shift.

Both draw noise and the timestep per sample from a generator seeded by (seed, step, position
in the global batch), so a resumed or multi-process run draws exactly what one straight run
draws without saving generator state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lorastudio.training.loss import noise_per_sample, sample_noise, training_target

if TYPE_CHECKING:
    import torch

SIGMA_SAMPLINGS = ("flux_shift", "logit_normal", "uniform", "shift")

# FLUX.1-dev's scheduler: mu grows linearly from 0.5 at 256 image tokens to 1.15 at 4096.
BASE_SEQ_LEN, MAX_SEQ_LEN, BASE_SHIFT, MAX_SHIFT = 256, 4096, 0.5, 1.15


@dataclass(frozen=True)
class DDPMObjective:
    """Discrete-time diffusion as SD trains it (timesteps 0..T-1 from the model's scheduler)."""

    name: str = "ddpm"

    def draw(self, latents: torch.Tensor, positions: list[int], *, seed: int, step: int, scheduler: Any,
             noise_offset: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample noise and integer timesteps."""
        return sample_noise(latents, positions, seed=seed, step=step, num_timesteps=scheduler.config.num_train_timesteps,
                            noise_offset=noise_offset)

    def noisy_and_target(self, scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                         prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The noised latents and what the UNet should output."""
        return scheduler.add_noise(latents, noise, timesteps), training_target(scheduler, latents, noise, timesteps, prediction_type)


def flux_mu(image_tokens: int) -> float:
    """The dynamic-shift exponent mu for an image of `image_tokens` packed tokens (diffusers' calculate_shift)."""
    slope = (MAX_SHIFT - BASE_SHIFT) / (MAX_SEQ_LEN - BASE_SEQ_LEN)
    return image_tokens * slope + (BASE_SHIFT - slope * BASE_SEQ_LEN)


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Time shift `s·σ / (1 + (s − 1)·σ)`; with s = e^μ it equals the scheduler's exponential shift."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


@dataclass(frozen=True)
class FlowMatchObjective:
    """Rectified flow as Flux trains: sigma in (0, 1), velocity target noise − latents.

    `sampling`: flux_shift (logit-normal, then shifted by e^mu of the image's token count),
    logit_normal (sigmoid(scale·N(0,1)), no shift), uniform (U(0,1), no shift), or shift
    (logit-normal, then the fixed `shift`).
    """

    sampling: str = "flux_shift"
    sigmoid_scale: float = 1.0
    shift: float = 3.1582
    name: str = "flow_match"

    def __post_init__(self) -> None:
        if self.sampling not in SIGMA_SAMPLINGS:
            raise ValueError(f"unknown sigma sampling '{self.sampling}'; use one of {', '.join(SIGMA_SAMPLINGS)}")

    def shift_for(self, image_tokens: int) -> float:
        """The shift factor applied to a logit-normal draw for this image size (1 = none)."""
        if self.sampling == "flux_shift":
            return math.exp(flux_mu(image_tokens))
        return self.shift if self.sampling == "shift" else 1.0

    def sigma_from_generator(self, gen: torch.Generator, image_tokens: int) -> float:
        """One sigma drawn from `gen` (the same generator as the sample's noise)."""
        import torch

        if self.sampling == "uniform":
            return float(torch.rand((), generator=gen))
        sigma = torch.sigmoid(self.sigmoid_scale * torch.randn((), generator=gen, dtype=torch.float64))
        return float(shift_sigma(sigma, self.shift_for(image_tokens)))

    def draw(self, latents: torch.Tensor, positions: list[int], *, seed: int, step: int, scheduler: Any,
             noise_offset: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample noise and sigma (float32, in [0, 1]); latents are [B, C, h, w] (unpacked)."""
        import torch

        image_tokens = (latents.shape[-2] // 2) * (latents.shape[-1] // 2)
        noise, sigmas = noise_per_sample(
            latents, positions, seed=seed, step=step, noise_offset=noise_offset,
            draw=lambda gen: self.sigma_from_generator(gen, image_tokens),
        )
        return noise, torch.tensor(sigmas, device=latents.device, dtype=torch.float32)

    def noisy_and_target(self, scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
                         prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
        """`x_t = (1 − σ)·x0 + σ·n` and the raw velocity target `n − x0`."""
        if prediction_type != "flow":
            raise ValueError(f"flow matching predicts the raw velocity ('flow'), not '{prediction_type}'")
        s = sigmas.to(latents.dtype).view(-1, *([1] * (latents.dim() - 1)))
        return (1.0 - s) * latents + s * noise, noise - latents
