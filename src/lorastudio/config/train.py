"""The training config: a closed schema with one section per concern.

`lorastudio init-config --family sd15` prints it with every key commented. Checks that need
no model (value ranges, cross-field rules) live in validators here; checks that look at the
machine, the model folder or the dataset live in `check_environment` and
`lorastudio.training.preflight`, and all of them run before any weights load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from lorastudio.config.flux import FluxSection
from lorastudio.config.loader import Schema
from lorastudio.config.methods import DreamBoothSection, Method, TISection, check_method_config

Family = Literal["sd15", "sd2", "sdxl", "flux"]
TARGET_PRESET_NAMES = ("attn", "attn_ff", "all_linear")


class ModelSection(Schema):
    family: Family = Field("sd15", description="Model family: sd15, sd2, sdxl or flux (FLUX.1 dev/schnell). Decides text encoders, conditioning and LoRA key names.")
    path: str = Field(
        "runwayml/stable-diffusion-v1-5",
        description="Base model: a hub id, a local diffusers folder, or a single-file .safetensors checkpoint.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when `path` is a hub id.")
    variant: str | None = Field(None, description="Weight variant to load, e.g. fp16 (files named *.fp16.safetensors).")
    prediction_type: Literal["auto", "epsilon", "v_prediction", "flow"] = Field(
        "auto", description="What the UNet predicts. auto reads the model's scheduler config (SD2-768 models use v_prediction; Flux: flow)."
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="Dtype of the frozen weights (UNet, VAE, text encoders). LoRA weights always train in float32."
    )


class DatasetEntry(Schema):
    path: Path = Field(description="A dataset dir written by `lorastudio prepare` (manifest.jsonl + images/).")
    repeats: int = Field(1, ge=1, description="How many times each image of this dataset is seen per epoch (times its own `repeats`).")


class DataSection(Schema):
    datasets: list[DatasetEntry] = Field(default_factory=list, description="Training datasets; at least one. A plain path string is accepted for an entry.")
    regularization: DatasetEntry | None = Field(
        None, description="Optional class-image dataset for DreamBooth-style prior preservation (its captions name the class, not the trigger)."
    )
    prior_loss_weight: float = Field(1.0, ge=0.0, description="Weight of the regularization images' loss term.")
    shuffle: bool = Field(False, description="Shuffle comma-separated caption phrases each time an image is seen (after the first `keep_tokens`). Disables the text cache.")
    keep_tokens: int = Field(1, ge=0, description="Leading caption phrases that never move or drop (1 keeps the trigger first).")
    caption_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Probability of training an image with an empty caption. Disables the text cache when > 0.")
    tag_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Probability of dropping each phrase after `keep_tokens`. Disables the text cache when > 0.")
    flip: bool = Field(False, description="Horizontal flip augmentation (do not use for subjects with text or asymmetric features).")

    @field_validator("datasets", mode="before")
    @classmethod
    def _paths_as_entries(cls, value: object) -> object:
        if isinstance(value, list):
            return [{"path": v} if isinstance(v, (str, Path)) else v for v in value]
        return value

    @field_validator("regularization", mode="before")
    @classmethod
    def _path_as_entry(cls, value: object) -> object:
        return {"path": value} if isinstance(value, (str, Path)) else value

    @property
    def varies_captions(self) -> bool:
        """True when the text seen for an image changes between epochs."""
        return self.shuffle or self.caption_dropout > 0 or self.tag_dropout > 0


class NetworkSection(Schema):
    rank: int = Field(16, ge=1, description="LoRA rank of the UNet adapter (must be >= 1).")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank.")
    targets: str | list[str] = Field(
        "attn", description="UNet modules to adapt: a preset (attn, attn_ff, all_linear) or an explicit list of module names."
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA branch.")
    train_text_encoder: bool = Field(False, description="Also train LoRA adapters on the text encoder(s). Disables the text cache.")
    text_encoder_rank: int = Field(8, ge=1, description="LoRA rank for the text encoder(s) when train_text_encoder is true.")
    text_encoder_alpha: float = Field(8.0, gt=0, description="LoRA alpha for the text encoder(s).")
    text_encoder_targets: str | list[str] = Field("attn", description="Text encoder modules to adapt: a preset or an explicit list.")
    text_encoder_lr: float | None = Field(None, gt=0, description="Learning rate of the text encoder adapters (null = train.lr).")

    @field_validator("targets", "text_encoder_targets")
    @classmethod
    def _known_preset(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str) and value not in TARGET_PRESET_NAMES:
            raise ValueError(f"unknown preset '{value}'; use one of {', '.join(TARGET_PRESET_NAMES)} or a list of module names")
        if isinstance(value, list) and not value:
            raise ValueError("an explicit target list must name at least one module")
        return value


class TrainSection(Schema):
    method: Method = Field("lora", description="What to train: lora (adapter), ti (the trigger's embedding vectors), pivotal (ti, then lora) or dreambooth (full UNet fine-tune).")
    max_steps: int | None = Field(1000, ge=1, description="Optimizer steps to train. Set to null to train for `epochs` instead.")
    epochs: int | None = Field(None, ge=1, description="Epochs to train when max_steps is null.")
    batch_size: int = Field(1, ge=1, description="Images per batch per process. Every batch comes from one bucket (one image size).")
    grad_accum: int = Field(1, ge=1, description="Batches accumulated per optimizer step.")
    lr: float = Field(1e-4, gt=0, description="Learning rate of the UNet adapter (Prodigy: use 1.0).")
    scheduler: Literal["constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial"] = Field(
        "constant", description="Learning-rate schedule (diffusers.optimization.get_scheduler)."
    )
    warmup_steps: int = Field(0, ge=0, description="Warm-up steps for schedulers that use them.")
    optimizer: Literal["adamw", "adamw8bit", "prodigy"] = Field(
        "adamw", description="adamw (torch), adamw8bit (bitsandbytes, GPU only) or prodigy (pip install prodigyopt)."
    )
    weight_decay: float = Field(1e-2, ge=0, description="Decoupled weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this value (null = no clipping).")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "auto",
        description="Autocast precision. auto = bf16 for SD-size models on a GPU with bf16 or a CPU with bf16 "
        "instructions (avx512_bf16 / AMX; 1.5x faster there, loss within 0.1% of fp32 in benchmarks/bf16_parity.py), "
        "else no (fp32). fp16 needs a GPU.",
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory in the UNet.")
    noise_offset: float = Field(0.0, ge=0, description="Noise offset (helps very dark / bright images); 0.05-0.1 is typical.")
    min_snr_gamma: float | None = Field(None, gt=0, description="Min-SNR loss weighting gamma (5.0 is typical); null disables it.")
    seed: int = Field(0, description="Seed for sampling order, noise, timesteps, augmentations and LoRA init.")
    cache: Literal["none", "memory", "disk"] = Field(
        "disk", description="Cache VAE latents and (when captions are fixed and the text encoder frozen) text embeddings."
    )
    cache_dir: Path | None = Field(None, description="Where the disk cache lives (null = $XDG_CACHE_HOME/lorastudio or ~/.cache/lorastudio). Reused across runs.")
    max_nonfinite_steps: int = Field(5, ge=1, description="Stop after this many non-finite losses / gradient norms in a row (each one skips its step).")
    min_free_disk_mb: float = Field(
        0.0, ge=0, description="Extra free space (MB) required on the output disk before a checkpoint is written, on top of its estimated size."
    )
    debug_nan_at_steps: list[int] = Field(default_factory=list, description="Testing aid: make the loss NaN at these optimizer steps (1-based).")
    debug_stop_after_step: int | None = Field(None, ge=1, description="Testing aid: behave as if Ctrl-C arrived right after this step.")

    @model_validator(mode="after")
    def _length_given(self) -> TrainSection:
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set train.max_steps or train.epochs")
        return self


class SamplePrompt(Schema):
    prompt: str = Field(description="Sample prompt; include your trigger word.")
    negative_prompt: str = Field("", description="Negative prompt.")
    seed: int = Field(0, description="Seed of this prompt (the same every time so samples are comparable).")
    width: int | None = Field(None, ge=8, description="Width in pixels (null = sample.width).")
    height: int | None = Field(None, ge=8, description="Height in pixels (null = sample.height).")
    steps: int | None = Field(None, ge=1, description="Denoising steps (null = sample.steps).")
    cfg: float | None = Field(None, ge=0, description="Classifier-free guidance scale (null = sample.cfg).")


class SampleSection(Schema):
    every_n_steps: int | None = Field(None, ge=1, description="Render the sample prompts every N steps (null = never during training).")
    at_start: bool = Field(True, description="Also render at step 0, to show the base model's look.")
    prompts: list[SamplePrompt] = Field(default_factory=list, description="Prompts to render; each has its own seed, size, steps, cfg and negative prompt.")
    width: int = Field(512, ge=8, description="Default sample width.")
    height: int = Field(512, ge=8, description="Default sample height.")
    steps: int = Field(25, ge=1, description="Default denoising steps.")
    cfg: float = Field(7.0, ge=0, description="Default guidance scale.")

    @field_validator("prompts", mode="before")
    @classmethod
    def _strings_as_prompts(cls, value: object) -> object:
        if isinstance(value, list):
            return [{"prompt": v} if isinstance(v, str) else v for v in value]
        return value


class SaveSection(Schema):
    every_n_steps: int | None = Field(250, ge=1, description="Write a checkpoint every N steps (null = only at the end and on Ctrl-C).")
    keep_last: int = Field(3, ge=1, description="Keep the newest K checkpoints; older ones are deleted.")
    formats: list[Literal["kohya", "diffusers"]] = Field(
        default_factory=lambda: ["kohya", "diffusers"], min_length=1, description="Adapter export formats: kohya (A1111/ComfyUI) and diffusers."
    )


class LoggingSection(Schema):
    every_n_steps: int = Field(10, ge=1, description="Write a metrics.jsonl row every N steps.")
    tensorboard: bool = Field(True, description="Also write TensorBoard events when tensorboard is installed.")


class ValidationSection(Schema):
    every_n_steps: int | None = Field(
        None, ge=1, description="Measure the validation loss every N steps, at step 0 and at the last step (null = off). "
        "Each image gets the same noise and timestep every time, so the curve moves only when the model does."
    )
    holdout: int = Field(
        0, ge=0, description="Images held out of training for the validation loss (chosen from the datasets by train.seed; "
        "never trained on). 0 = measure on `images` training images instead (a fit figure, not a generalisation one)."
    )
    images: int = Field(4, ge=1, description="With holdout 0: how many training images the validation loss is measured on.")
    leak: bool = Field(
        True, description="When samples render, measure how much more often the dataset's confounders (e.g. an uncaptioned "
        "black background) appear than in the step-0 (base model) samples of the same prompts. Renders step-0 samples "
        "when sample.every_n_steps is set. An early warning from the sample prompts; `lorastudio evaluate` gives the final figure."
    )

    @model_validator(mode="after")
    def _holdout_measured(self) -> ValidationSection:
        if self.holdout and self.every_n_steps is None:
            raise ValueError(f"validation.holdout={self.holdout} takes images out of training for a validation loss that is off; "
                             "set validation.every_n_steps too (or holdout: 0)")
        return self


class TrainConfig(Schema):
    """The whole `lorastudio train` config."""

    model: ModelSection = Field(default_factory=ModelSection, description="Base model.")
    data: DataSection = Field(default_factory=DataSection, description="Datasets, captions and augmentation.")
    network: NetworkSection = Field(default_factory=NetworkSection, description="The LoRA adapter.")
    train: TrainSection = Field(default_factory=TrainSection, description="Optimisation.")
    sample: SampleSection = Field(default_factory=SampleSection, description="Sample images during training.")
    save: SaveSection = Field(default_factory=SaveSection, description="Checkpoints and exports.")
    output_dir: Path = Field(Path("runs/lora"), description="Run dir: config, metrics, samples, checkpoints and final/.")
    logging: LoggingSection = Field(default_factory=LoggingSection, description="Metrics logging.")
    validation: ValidationSection = Field(default_factory=ValidationSection, description="Validation loss and sample-time leak, logged to metrics.jsonl.")
    ti: TISection = Field(default_factory=TISection, description="Methods ti and pivotal: the trigger to learn, its vectors and the pivot.")
    dreambooth: DreamBoothSection = Field(default_factory=DreamBoothSection, description="Method dreambooth: text encoder, class images, exports.")

    @model_validator(mode="after")
    def _method_rules(self) -> TrainConfig:
        check_method_config(self.train.method, self.ti, self.dreambooth, self.network.train_text_encoder)
        return self
    flux: FluxSection = Field(default_factory=FluxSection, description="FLUX.1 only: sigma sampling, guidance, T5 length.")

    @model_validator(mode="after")
    def _flux_rules(self) -> TrainConfig:
        if self.model.family != "flux":
            return self
        if self.train.mixed_precision == "fp16" or self.model.dtype == "float16":
            raise ValueError("Flux does not train in fp16 (NaN losses and black samples in every trainer's history); "
                             "use train.mixed_precision=bf16 / model.dtype=bfloat16 on a GPU, or float32")
        if self.train.min_snr_gamma is not None:
            raise ValueError("train.min_snr_gamma is a DDPM weighting; Flux trains flow matching, set it to null")
        if self.model.prediction_type not in ("auto", "flow"):
            raise ValueError(f"model.prediction_type={self.model.prediction_type} is not a Flux target; Flux predicts the velocity (flow)")
        return self


FAMILY_DEFAULTS: dict[str, dict] = {
    "sd15": {"model": {"family": "sd15", "path": "runwayml/stable-diffusion-v1-5"}, "sample": {"width": 512, "height": 512}},
    "sd2": {
        "model": {"family": "sd2", "path": "stabilityai/stable-diffusion-2-1", "prediction_type": "v_prediction"},
        "sample": {"width": 768, "height": 768},
    },
    "sdxl": {
        "model": {"family": "sdxl", "path": "stabilityai/stable-diffusion-xl-base-1.0"},
        "network": {"rank": 32, "alpha": 16.0},
        "sample": {"width": 1024, "height": 1024},
    },
    "flux": {
        "model": {"family": "flux", "path": "black-forest-labs/FLUX.1-dev", "dtype": "bfloat16"},
        "network": {"rank": 16, "alpha": 16.0, "targets": "all_linear"},
        "train": {"lr": 1e-4, "gradient_checkpointing": True, "mixed_precision": "bf16"},
        "sample": {"width": 1024, "height": 1024, "steps": 28, "cfg": 3.5},
    },
}

# Keys that may differ when resuming: they do not change what the adapter learns.
RESUME_SAFE_KEYS = (
    "sample",
    "save",
    "logging",
    # validation.holdout changes which images train, so it changes the dataset fingerprint.
    "validation",
    "output_dir",
    "train.cache",
    "train.cache_dir",
    "train.max_nonfinite_steps",
    "train.min_free_disk_mb",
    "train.debug_nan_at_steps",
    "train.debug_stop_after_step",
    "ti.bundle",
    "dreambooth.single_file",
    "dreambooth.export_dtype",
)
