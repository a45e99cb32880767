"""Request bodies and their bounds: every parameter a client sends is limited here.

Values outside a bound are a 422 before anything is queued, so no worker ever sees a
10,000-step request, a NaN guidance or a LoRA named by a path.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_PROMPT_CHARS = 2000
LORA_ID_RE = r"^[a-z0-9][a-z0-9_-]{0,63}$"
SIZE_RE = re.compile(r"^(\d{2,4})x(\d{2,4})$")
MIN_SIDE, MAX_SIDE = 64, 2048
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u202a-\u202e\u2066-\u2069]")


class LoraRef(BaseModel):
    """An adapter by registry id, at a scale."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=LORA_ID_RE, description="a registered LoRA id (GET /v1/loras)")
    scale: float = Field(default=1.0, ge=-4.0, le=4.0)


def clean_prompt(text: str) -> str:
    """Prompts are inert text: control characters and bidi overrides are refused."""
    if _CONTROL.search(text):
        raise ValueError("control characters and bidirectional overrides are not allowed in prompts")
    return text


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' with each side 64-2048 and a multiple of 8."""
    match = SIZE_RE.match(text)
    if not match:
        raise ValueError("size must look like 512x512")
    width, height = int(match[1]), int(match[2])
    for side in (width, height):
        if not MIN_SIDE <= side <= MAX_SIDE or side % 8:
            raise ValueError(f"each side must be {MIN_SIDE}-{MAX_SIDE} and a multiple of 8")
    return width, height


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    steps: int = Field(default=20, ge=1, le=150)
    guidance: float = Field(default=7.0, ge=0.0, le=30.0)
    loras: list[LoraRef] = Field(default_factory=list, max_length=4)
    priority: int = Field(default=0, ge=-10, le=10)
    deadline_s: float | None = Field(default=None, gt=0, le=86400)

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _inert(cls, value: str) -> str:
        return clean_prompt(value)

    @field_validator("guidance")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class GenerationBody(_Common):
    """POST /v1/images/generations: the OpenAI images body plus lorastudio's extensions."""

    n: int = Field(default=1, ge=1, le=4)
    size: str = Field(default="512x512", max_length=9)
    response_format: Literal["b64_json", "url"] = "b64_json"
    model: str | None = Field(default=None, max_length=200, description="accepted and ignored (one base model)")
    user: str | None = Field(default=None, max_length=200)
    quality: str | None = Field(default=None, max_length=20)
    style: str | None = Field(default=None, max_length=20)

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value


class EditFields(_Common):
    """POST /v1/images/edits form fields beside the image (the enhance path)."""

    strength: float = Field(default=0.45, ge=0.0, le=1.0)
    control: Literal["none", "canny"] = "none"
    control_scale: float = Field(default=1.0, ge=0.0, le=2.0, description="ControlNet conditioning scale")
    n: int = Field(default=1, ge=1, le=1)
    response_format: Literal["b64_json", "url"] = "b64_json"
    resolution: int = Field(default=512, ge=64, le=2048)


class TrainingFields(BaseModel):
    """POST /v1/trainings form fields beside the dataset zip."""

    model_config = ConfigDict(extra="forbid")
    trigger: str = Field(pattern=r"^[A-Za-z0-9_]{2,64}$")
    lora_id: str = Field(pattern=LORA_ID_RE)
    steps: int = Field(default=300, ge=1, le=20000)
    rank: int = Field(default=4, ge=1, le=128)
    learning_rate: float = Field(default=1e-3, gt=0, le=1.0)
    resolution: int = Field(default=64, ge=64, le=1024)
    checkpoint_every: int = Field(default=50, ge=1, le=20000)
    priority: int = Field(default=-1, ge=-10, le=10)
