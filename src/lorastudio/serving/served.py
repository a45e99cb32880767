"""What the served base model is: family, variant, request defaults and pipeline call arguments.

Read from the model folder's config files only (no torch), so the API process fills a
request's unset steps and guidance with the values the worker's pipeline is deployed with:
FLUX.1-dev 28 steps at guidance 3.5, schnell 4 steps without guidance, the SD families the
request schema's long-standing 20 steps at 7.0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

SD_DEFAULTS = {"steps": 20, "guidance": 7.0}


@dataclass(frozen=True)
class ServedModel:
    """The facts about the base model that requests and the worker's pipelines depend on."""

    family: str  # sd15 | sd2 | sdxl | flux
    variant: str  # dev | schnell for flux, "" otherwise
    pipeline_kind: str  # key of evaluation.loading.PIPELINE_CLASSES: sd | sdxl | flux
    steps: int
    guidance: float
    size_multiple: int  # image sides must be multiples of this
    call_kwargs: dict[str, Any] = field(default_factory=dict)  # extra pipeline call arguments (Flux: T5 length)


@lru_cache(maxsize=8)
def served_model(model: str, family: str) -> ServedModel:
    """The served model `model` of `family` (sd15 | sd2 | sdxl | flux); the Flux variant is read from the folder."""
    from lorastudio.models.families import get_family
    from lorastudio.models.families.flux import PIPELINE_DEFAULTS, read_variant

    base = get_family(family)
    if family != "flux":
        return ServedModel(family, "", "sdxl" if family == "sdxl" else "sd", size_multiple=base.size_multiple,
                           **SD_DEFAULTS)
    # A hub id has no local config: its name says which variant it is (FLUX.1-schnell / FLUX.1-dev).
    variant = read_variant(model) or ("schnell" if "schnell" in model.lower() else "dev")
    flux = base.with_variant(variant)
    return ServedModel("flux", variant, "flux", size_multiple=flux.size_multiple, call_kwargs=flux.pipeline_kwargs(),
                       **PIPELINE_DEFAULTS[variant])


def request_defaults(fields_set: set[str], steps: int, guidance: float, served: ServedModel) -> tuple[int, float]:
    """(steps, guidance) of a request: what it sent, else the served model's defaults."""
    return (steps if "steps" in fields_set else served.steps,
            guidance if "guidance" in fields_set else served.guidance)
