"""Model families: the only place where SD1.5/SD2, SDXL and Flux differ.

A family is chosen once by name (`get_family(cfg.model.family).configured(cfg)`) and then
used through the `Family` protocol: which classes and folders to load, how to encode
captions, its training objective (noise/timestep draw, noised input, target), how to call
its denoiser, which modules LoRA targets, how adapters are exported, and how to assemble a
pipeline for sampling. The loop never asks which family it runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from lorastudio.config.train import ModelSection


class FamilyError(ValueError):
    """The model at `model.path` does not fit the configured family, or cannot be read."""


@dataclass
class ModelParts:
    """Components of a diffusion model, each explicit; text parts may be absent once cached."""

    unet: Any  # the denoiser: a UNet2DConditionModel or a FluxTransformer2DModel
    noise_scheduler: Any
    vae: Any = None
    text_encoders: list[Any] = field(default_factory=list)
    tokenizers: list[Any] = field(default_factory=list)


class Family(Protocol):
    """What the training loop and the sampler need from a model family."""

    name: str
    pipeline_class: str
    text_encoder_folders: tuple[str, ...]
    tokenizer_folders: tuple[str, ...]
    default_prediction_type: str
    text_encoder_classes: tuple[str, ...]
    tokenizer_classes: tuple[str, ...]
    denoiser_folder: str
    denoiser_class: str
    denoiser_arg: str  # keyword of the denoiser in the pipeline's constructor
    train_scheduler_class: str
    size_multiple: int  # image sides must be multiples of this
    objective: Any  # training.objectives.DDPMObjective | FlowMatchObjective

    def configured(self, cfg: Any) -> Family:
        """The family with this run's settings applied (variant, objective, text lengths)."""
        ...

    @property
    def text_cache_tag(self) -> str:
        """Everything besides weights and tokenizers that shapes the text embeddings."""
        ...

    def denoiser_load_kwargs(self) -> dict[str, Any]:
        """Extra `from_pretrained` keywords for the denoiser (e.g. a quantisation config)."""
        ...

    def check_run(self, cfg: Any, has_gpu: bool) -> list[str]:
        """Family-specific preflight: raise ValueError for what this machine cannot run; return log lines."""
        ...

    def predict(self, model: Any, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, torch.Tensor],
                height: int, width: int) -> torch.Tensor:
        """The denoiser's prediction, in the latents' [B, C, h, w] layout."""
        ...

    def target_modules(self, model: Any, targets: str | list[str]) -> list[str]:
        """Denoiser module names a preset (or explicit list) adapts."""
        ...

    def text_encoder_target_modules(self, index: int, encoder: Any, targets: str | list[str]) -> list[str]:
        """Module names of text encoder `index` a preset (or explicit list) adapts."""
        ...

    def export_adapter(self, out_dir: Path, **kwargs: Any) -> dict[str, Path]:
        """Write the attached adapter in the configured formats."""
        ...

    def sampling_scheduler(self, config: Any, prediction_type: str) -> Any:
        """A fresh scheduler for sampling, built from the model's scheduler config."""
        ...

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Extra pipeline call arguments for samples (Flux: the T5 length it trains with)."""
        ...

    def encode_captions(self, text_encoders: list[Any], tokenizers: list[Any], captions: list[str]) -> dict[str, torch.Tensor]:
        """Conditioning tensors for a batch of captions, keyed by name (batch first)."""
        ...

    def unet_kwargs(self, cond: dict[str, torch.Tensor], height: int, width: int) -> dict[str, Any]:
        """Keyword arguments for `unet(latents, t, **kwargs)` given cached/encoded conditioning."""
        ...


def get_family(name: str) -> Family:
    """The family object for `sd15`, `sd2`, `sdxl` or `flux` (with default settings)."""
    from lorastudio.models.families import flux, sd15, sdxl

    families: dict[str, Family] = {"sd15": sd15.SD15, "sd2": sd15.SD2, "sdxl": sdxl.SDXL, "flux": flux.FLUX}
    if name not in families:
        raise FamilyError(f"unknown model family '{name}'; use one of {', '.join(families)}")
    return families[name]


def is_single_file(path: str) -> bool:
    """True when `path` names a single-file checkpoint rather than a folder or hub id."""
    return path.endswith((".safetensors", ".ckpt"))


def detect_family(path: str) -> str | None:
    """Guess 'sdxl', 'flux' or 'sd' from a local model without loading weights (None: cannot tell).

    Reads only `model_index.json` / `unet/config.json` of a diffusers folder, or the tensor
    names in a `.safetensors` header, so a mismatch is reported before anything heavy runs.
    """
    local = Path(path)
    if local.is_dir():
        index = local / "model_index.json"
        if index.is_file():
            try:
                data = json.loads(index.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise FamilyError(f"{index} is not valid JSON ({exc.msg})") from None
            cls = str(data.get("_class_name", ""))
            if cls.startswith("Flux"):
                return "flux"
            if "XL" in cls or "text_encoder_2" in data:
                return "sdxl"
            if cls.startswith("StableDiffusion"):
                return "sd"
        if (local / "transformer" / "config.json").is_file():
            return "flux"
        unet_cfg = local / "unet" / "config.json"
        if unet_cfg.is_file():
            data = json.loads(unet_cfg.read_text(encoding="utf-8"))
            return "sdxl" if data.get("addition_embed_type") == "text_time" else "sd"
        return None
    if local.is_file() and local.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(local), framework="pt") as fh:
            keys = fh.keys()
        if any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in keys):
            return "flux"
        return "sdxl" if any(k.startswith("conditioner.embedders.1.") for k in keys) else "sd"
    return None


def check_model_matches(model_cfg: ModelSection) -> None:
    """Raise FamilyError when a local model clearly belongs to another family."""
    found = detect_family(model_cfg.path)
    wanted = model_cfg.family if model_cfg.family in ("sdxl", "flux") else "sd"
    if found is not None and found != wanted:
        what = {"sdxl": "SDXL", "flux": "FLUX.1"}.get(found, "SD1.x/2.x")
        suggestion = found if found in ("sdxl", "flux") else "sd15 (or sd2)"
        raise FamilyError(
            f"model.path {model_cfg.path} holds {what} weights but model.family is '{model_cfg.family}'; "
            f"set model.family={suggestion} or point model.path at a {model_cfg.family} model"
        )
    if not is_single_file(model_cfg.path) and Path(model_cfg.path).exists() and not Path(model_cfg.path).is_dir():
        raise FamilyError(f"model.path {model_cfg.path} is a file but not a .safetensors/.ckpt checkpoint")


def torch_dtype(name: str) -> torch.dtype:
    """`float32` / `float16` / `bfloat16` -> torch dtype."""
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def _pretrained_kwargs(model_cfg: ModelSection, dtype: torch.dtype) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"torch_dtype": dtype}
    if model_cfg.revision:
        kwargs["revision"] = model_cfg.revision
    if model_cfg.variant:
        kwargs["variant"] = model_cfg.variant
    return kwargs


def _single_file_pipeline(family: Family, model_cfg: ModelSection, dtype: torch.dtype) -> Any:
    import diffusers

    cls = getattr(diffusers, family.pipeline_class)
    return cls.from_single_file(model_cfg.path, torch_dtype=dtype)


def load_unet_and_scheduler(family: Family, model_cfg: ModelSection) -> ModelParts:
    """Load the denoiser (UNet / transformer) and the family's training scheduler from the model."""
    import diffusers

    dtype = torch_dtype(model_cfg.dtype)
    scheduler_cls = getattr(diffusers, family.train_scheduler_class)
    if is_single_file(model_cfg.path):
        pipe = _single_file_pipeline(family, model_cfg, dtype)
        scheduler = scheduler_cls.from_config(pipe.scheduler.config)
        return ModelParts(unet=getattr(pipe, family.denoiser_arg), noise_scheduler=scheduler)
    kwargs = _pretrained_kwargs(model_cfg, dtype)
    kwargs.update(family.denoiser_load_kwargs())
    denoiser = getattr(diffusers, family.denoiser_class).from_pretrained(model_cfg.path, subfolder=family.denoiser_folder, **kwargs)
    sched_kwargs = {"revision": model_cfg.revision} if model_cfg.revision else {}
    scheduler = scheduler_cls.from_pretrained(model_cfg.path, subfolder="scheduler", **sched_kwargs)
    return ModelParts(unet=denoiser, noise_scheduler=scheduler)


def load_vae(family: Family, model_cfg: ModelSection) -> Any:
    """Load the VAE (frozen, eval mode)."""
    from diffusers import AutoencoderKL

    dtype = torch_dtype(model_cfg.dtype)
    if is_single_file(model_cfg.path):
        vae = _single_file_pipeline(family, model_cfg, dtype).vae
    else:
        vae = AutoencoderKL.from_pretrained(model_cfg.path, subfolder="vae", **_pretrained_kwargs(model_cfg, dtype))
    return vae.requires_grad_(False).eval()


def load_text_parts(family: Family, model_cfg: ModelSection) -> tuple[list[Any], list[Any]]:
    """Load the family's text encoders and tokenizers (frozen, eval mode)."""
    import transformers

    dtype = torch_dtype(model_cfg.dtype)
    if is_single_file(model_cfg.path):
        pipe = _single_file_pipeline(family, model_cfg, dtype)
        encoders = [getattr(pipe, name) for name in family.text_encoder_folders]
        tokenizers = [getattr(pipe, name) for name in family.tokenizer_folders]
    else:
        kwargs = _pretrained_kwargs(model_cfg, dtype)
        tok_kwargs = {"revision": model_cfg.revision} if model_cfg.revision else {}
        encoders, tokenizers = [], []
        folders = zip(family.text_encoder_folders, family.tokenizer_folders, family.text_encoder_classes,
                      family.tokenizer_classes, strict=True)
        for enc_folder, tok_folder, enc_cls, tok_cls in folders:
            encoders.append(getattr(transformers, enc_cls).from_pretrained(model_cfg.path, subfolder=enc_folder, **kwargs))
            tokenizers.append(getattr(transformers, tok_cls).from_pretrained(model_cfg.path, subfolder=tok_folder, **tok_kwargs))
    return [e.requires_grad_(False).eval() for e in encoders], tokenizers


def build_pipeline(family: Family, parts: ModelParts, scheduler: Any) -> Any:
    """Assemble the family's text-to-image pipeline from live components (no copies)."""
    import diffusers

    cls = getattr(diffusers, family.pipeline_class)
    kwargs: dict[str, Any] = {family.denoiser_arg: parts.unet, "vae": parts.vae, "scheduler": scheduler}
    for name, enc in zip(family.text_encoder_folders, parts.text_encoders, strict=True):
        kwargs[name] = enc
    for name, tok in zip(family.tokenizer_folders, parts.tokenizers, strict=True):
        kwargs[name] = tok
    if family.pipeline_class == "StableDiffusionPipeline":
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = cls(**kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe
