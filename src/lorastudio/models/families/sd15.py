"""SD 1.x and SD 2.x: one CLIP text encoder, conditioning is its last hidden state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorastudio.training.objectives import DDPMObjective


def tokenize(tokenizer: Any, captions: list[str]) -> Any:
    """Pad/truncate to the tokenizer's full length, as the pipelines do at inference."""
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def sd_predict(family: Any, model: Any, noisy: Any, timesteps: Any, cond: dict[str, Any], height: int, width: int) -> Any:
    """The UNet's output for noised latents (shared by the SD families)."""
    return model(noisy, timesteps, **family.unet_kwargs(cond, height, width)).sample


def sd_export(family: Any, out_dir: Path, **kwargs: Any) -> dict[str, Path]:
    """kohya + diffusers exports of an SD-family adapter."""
    from lorastudio.models.lora import export_adapter

    return export_adapter(out_dir, family=family.name, **kwargs)


def sd_sampling_scheduler(config: Any, prediction_type: str) -> Any:
    """DPM-Solver++ from the model's scheduler config: good images in 20-30 steps."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(config, prediction_type=prediction_type)


def encode_sd(text_encoders: list[Any], tokenizers: list[Any], captions: list[str]) -> dict[str, Any]:
    """`{"hidden": [B, 77, D]}` from the text encoder's last layer."""
    encoder, tokenizer = text_encoders[0], tokenizers[0]
    ids = tokenize(tokenizer, captions).to(next(encoder.parameters()).device)
    return {"hidden": encoder(ids)[0]}


def sd_unet_kwargs(cond: dict[str, Any], height: int, width: int) -> dict[str, Any]:
    """Only cross-attention states; SD1/2 UNets take no extra conditioning."""
    return {"encoder_hidden_states": cond["hidden"]}


@dataclass(frozen=True)
class StableDiffusionFamily:
    """The UNet families: SD1.5 (epsilon), SD2 (v-prediction at 768 px) and SDXL.

    They train and sample alike; only the text conditioning differs, so each instance is
    given its own `encoder` (captions -> conditioning tensors) and `conditioning`
    (conditioning -> UNet keyword arguments).
    """

    name: str
    default_prediction_type: str
    pipeline_class: str = "StableDiffusionPipeline"
    text_encoder_folders: tuple[str, ...] = ("text_encoder",)
    tokenizer_folders: tuple[str, ...] = ("tokenizer",)
    text_encoder_classes: tuple[str, ...] = ("CLIPTextModel",)
    tokenizer_classes: tuple[str, ...] = ("CLIPTokenizer",)
    denoiser_folder: str = "unet"
    denoiser_class: str = "UNet2DConditionModel"
    denoiser_arg: str = "unet"
    train_scheduler_class: str = "DDPMScheduler"
    size_multiple: int = 8
    objective: DDPMObjective = field(default_factory=DDPMObjective)
    encoder: Callable[[list[Any], list[Any], list[str]], dict[str, Any]] = encode_sd
    conditioning: Callable[[dict[str, Any], int, int], dict[str, Any]] = sd_unet_kwargs

    def configured(self, cfg: Any) -> StableDiffusionFamily:
        """UNet families take no per-run settings."""
        return self

    @property
    def text_cache_tag(self) -> str:
        """What besides encoder weights and tokenizers shapes the cached text embeddings."""
        return self.name

    def denoiser_load_kwargs(self) -> dict[str, Any]:
        """No extra loading options for the UNet."""
        return {}

    def check_run(self, cfg: Any, has_gpu: bool) -> list[str]:
        """Nothing family-specific to check or estimate."""
        return []

    def predict(self, model: Any, noisy: Any, timesteps: Any, cond: dict[str, Any], height: int, width: int) -> Any:
        """The UNet's prediction for noised latents."""
        return sd_predict(self, model, noisy, timesteps, cond, height, width)

    def target_modules(self, model: Any, targets: str | list[str]) -> list[str]:
        """UNet module names a preset or list adapts."""
        from lorastudio.models.lora import unet_target_modules

        return unet_target_modules(model, targets)

    def text_encoder_target_modules(self, index: int, encoder: Any, targets: str | list[str]) -> list[str]:
        """CLIP module names a preset or list adapts."""
        from lorastudio.models.lora import text_encoder_target_modules

        return text_encoder_target_modules(encoder, targets)

    def export_adapter(self, out_dir: Path, **kwargs: Any) -> dict[str, Path]:
        """Write the adapter in kohya and diffusers formats."""
        return sd_export(self, out_dir, **kwargs)

    def sampling_scheduler(self, config: Any, prediction_type: str) -> Any:
        """A fresh sampling scheduler for the training samples."""
        return sd_sampling_scheduler(config, prediction_type)

    def pipeline_kwargs(self) -> dict[str, Any]:
        """No extra pipeline call arguments."""
        return {}

    def encode_captions(self, text_encoders: list[Any], tokenizers: list[Any], captions: list[str]) -> dict[str, Any]:
        """Conditioning tensors for a batch of captions, keyed by name (batch first)."""
        return self.encoder(text_encoders, tokenizers, captions)

    def unet_kwargs(self, cond: dict[str, Any], height: int, width: int) -> dict[str, Any]:
        """Keyword arguments for `unet(latents, t, **kwargs)` from the conditioning."""
        return self.conditioning(cond, height, width)

SD15 = StableDiffusionFamily(name="sd15", default_prediction_type="epsilon")
SD2 = StableDiffusionFamily(name="sd2", default_prediction_type="v_prediction")
