"""Config sections of the training methods other than plain LoRA (TI, pivotal, DreamBooth).

`train.method` picks the method; these sections hold its settings. Cross-field rules that
need no model (a TI run needs a trigger and an initialiser) live in `check_method_config`,
called from the TrainConfig validator.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from lorastudio.config.loader import Schema

Method = Literal["lora", "ti", "pivotal", "dreambooth"]
# A trigger becomes a file name (A1111 names the embedding after the file) and a prompt word.
TRIGGER_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_]*$")


class TISection(Schema):
    """Textual inversion of the trigger (methods ti and pivotal)."""

    trigger: str | None = Field(None, description="The new word to learn, e.g. ohwx_kfood_style (lowercase letters, digits, _). Must not be in the tokenizer's vocabulary.")
    num_vectors: int = Field(1, ge=1, le=16, description="Vectors per text encoder for the trigger (the trigger expands to this many tokens).")
    init: str | None = Field(
        None, description="Words whose token embeddings initialise the vectors (one word, several words, or the class noun such as 'food'); "
        "repeated or cut to num_vectors. 'random' draws them from N(0, std of the embedding table)."
    )
    lr: float = Field(5e-3, gt=0, description="Learning rate of the trigger vectors.")
    pivot_fraction: float | None = Field(0.5, gt=0, lt=1, description="pivotal: share of the steps that train only the trigger vectors, before the LoRA starts.")
    pivot_step: int | None = Field(None, ge=1, description="pivotal: step at which the LoRA starts (overrides pivot_fraction).")
    after_pivot: Literal["freeze", "continue"] = Field(
        "freeze", description="pivotal: after the pivot, freeze the vectors (removed from the optimizer) or keep training them at continue_lr."
    )
    continue_lr: float | None = Field(None, gt=0, description="pivotal: learning rate of the vectors after the pivot when after_pivot=continue (null = ti.lr / 10).")
    bundle: bool = Field(False, description="pivotal: also write <name>.bundle.safetensors (LoRA + bundle_emb keys; loads in A1111 only).")

    @field_validator("trigger")
    @classmethod
    def _trigger_shape(cls, value: str | None) -> str | None:
        if value is not None and not TRIGGER_PATTERN.match(value):
            raise ValueError(f"trigger '{value}' must be lowercase letters, digits and _ (it becomes a file name and a prompt word)")
        return value


class DreamBoothSection(Schema):
    """Full fine-tune with prior preservation (method dreambooth)."""

    train_text_encoder: bool = Field(False, description="Also fine-tune the text encoder(s) in full.")
    text_encoder_lr: float | None = Field(None, gt=0, description="Learning rate of the text encoder(s) (null = train.lr).")
    class_prompt: str | None = Field(None, description="Prompt of the class images for prior preservation, e.g. 'a photo of food'.")
    num_class_images: int = Field(0, ge=0, description="Class images wanted; images of data.regularization count toward it and only the rest are generated.")
    class_steps: int = Field(25, ge=1, description="Denoising steps per generated class image.")
    class_scheduler: Literal["ddim", "euler", "dpm"] = Field("ddim", description="Scheduler used to generate class images.")
    class_cfg: float = Field(7.0, ge=0, description="Guidance scale of generated class images.")
    class_seed: int = Field(0, description="Seed of class image i is class_seed + i, so generation is reproducible and resumable.")
    class_size: int = Field(512, ge=8, description="Width and height of generated class images (a multiple of 8).")
    single_file: bool = Field(True, description="Also export one .safetensors in the SD/SDXL original layout (A1111, ComfyUI).")
    export_dtype: Literal["float16", "float32"] = Field("float16", description="Dtype of the exported model weights.")


def check_method_config(method: str, ti: TISection, dreambooth: DreamBoothSection, train_text_encoder: bool) -> None:
    """Cross-field rules of the methods; raises ValueError naming the key."""
    if method in ("ti", "pivotal"):
        if ti.trigger is None:
            raise ValueError(f"train.method={method} needs ti.trigger (the new word to learn, e.g. ohwx_kfood_style)")
        if ti.init is None:
            raise ValueError(f"train.method={method} needs ti.init: a word, several words, the class noun (e.g. 'food') or 'random'")
        if train_text_encoder:
            raise ValueError(f"train.method={method} trains the trigger vectors; network.train_text_encoder must be false")
    if method == "dreambooth":
        if dreambooth.num_class_images and not dreambooth.class_prompt:
            raise ValueError("dreambooth.num_class_images > 0 needs dreambooth.class_prompt")
        if dreambooth.class_size % 8:
            raise ValueError(f"dreambooth.class_size={dreambooth.class_size} must be a multiple of 8")
        if train_text_encoder:
            raise ValueError("train.method=dreambooth: use dreambooth.train_text_encoder, not network.train_text_encoder")
