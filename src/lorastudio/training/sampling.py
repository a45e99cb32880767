"""Sample images during training, through the same generation code users run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorastudio.evaluation.generation import GenerationRequest, generate, save_png
from lorastudio.models.families import Family, ModelParts, build_pipeline

if TYPE_CHECKING:
    from lorastudio.config.train import TrainConfig
    from lorastudio.training.features import Features


def sample_requests(cfg: TrainConfig) -> list[GenerationRequest]:
    """The configured prompts with per-prompt values falling back to the section defaults."""
    s = cfg.sample
    return [
        GenerationRequest(
            prompt=p.prompt,
            negative_prompt=p.negative_prompt,
            seed=p.seed,
            width=p.width or s.width,
            height=p.height or s.height,
            steps=p.steps or s.steps,
            cfg=p.cfg if p.cfg is not None else s.cfg,
        )
        for p in s.prompts
    ]


def render_samples(family: Family, features: Features, unet: Any, cfg: TrainConfig, run_dir: Path, step: int, prediction_type: str) -> list[Path]:
    """Render every sample prompt into `samples/step_N/` with the adapter active."""
    was_training = unet.training
    unet.eval()
    out_dir = run_dir / "samples" / f"step_{step}"
    written = []
    try:
        with features.sampling_parts() as parts:
            # A fresh scheduler per sampling round: schedulers keep per-generation state.
            scheduler = family.sampling_scheduler(parts.noise_scheduler.config, prediction_type)
            view = ModelParts(unet=unet, noise_scheduler=parts.noise_scheduler, vae=parts.vae, text_encoders=_unwrapped(parts.text_encoders), tokenizers=parts.tokenizers)
            pipe = build_pipeline(family, view, scheduler)
            device = str(next(unet.parameters()).device)
            requests = sample_requests(cfg)
            for i, (req, image) in enumerate(zip(requests, generate(pipe, requests, device=device, pipe_kwargs=family.pipeline_kwargs()), strict=True)):
                written.append(save_png(image, out_dir / f"{i:02d}", req, extra={"step": step, "base_model": cfg.model.path}))
    finally:
        unet.train(was_training)
    return written


def _unwrapped(modules: list[Any]) -> list[Any]:
    return [getattr(m, "module", m) for m in modules]
