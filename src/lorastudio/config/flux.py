"""The `flux:` config section: settings only FLUX.1 (dev / schnell) training reads.

Defaults are the correct math for Flux (see reference/flux.md §5.1): raw velocity target,
logit-normal sigma with the resolution-dependent shift, guidance 1.0 fed to dev (keeps the
distilled guidance; >1 teaches CFG), no guidance for schnell, T5 at 512 (dev) / 256 (schnell).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from lorastudio.config.loader import Schema

FLUX_TARGET_PRESETS = ("attn", "all_linear")
# `init-config --family flux --variant schnell`, over the dev defaults: schnell's own pipeline
# settings (4 steps, no guidance) so training samples look like what users deploy.
SCHNELL_DEFAULTS = {"model": {"path": "black-forest-labs/FLUX.1-schnell"}, "flux": {"variant": "schnell"},
                    "sample": {"steps": 4, "cfg": 0.0}}


class FluxSection(Schema):
    variant: Literal["auto", "dev", "schnell"] = Field(
        "auto", description="FLUX.1 variant. auto reads transformer/config.json (guidance_embeds: dev has it, schnell not)."
    )
    sigma_sampling: Literal["flux_shift", "logit_normal", "uniform", "shift"] = Field(
        "flux_shift",
        description="Noise-level sampling: flux_shift (logit-normal shifted by the image's token count, as BFL trained), "
        "logit_normal (sigmoid of N(0,1), no shift), uniform, or shift (logit-normal with the fixed flux.shift).",
    )
    sigmoid_scale: float = Field(1.0, gt=0, description="Scale of the normal draw before the sigmoid (logit-normal spread).")
    shift: float = Field(3.1582, gt=0, description="Fixed shift for sigma_sampling=shift (3.1582 = the dynamic shift at 1024 px).")
    guidance: float = Field(
        1.0, ge=0, description="Guidance value fed to FLUX.1-dev's guidance embedding while training (1.0 keeps the distilled "
        "guidance; ignored for schnell, which has none). Recorded in the adapter metadata."
    )
    t5_max_length: int | None = Field(
        None, ge=8, le=512, description="T5 tokens per caption (null = 512 for dev, 256 for schnell, as the pipelines use)."
    )
    train_t5: bool = Field(False, description="With network.train_text_encoder, also put LoRA on T5 (CLIP always gets it then). Off: T5 stays frozen.")
    quantize_base: Literal["none", "int8", "nf4"] = Field(
        "none", description="Quantise the frozen transformer with bitsandbytes (GPU only; pip install bitsandbytes): "
        "int8 about halves bf16 memory, nf4 quarters it; the LoRA still trains in float32."
    )
    prediction: Literal["raw", "sigma_scaled"] = Field(
        "raw", description="What the transformer output is compared with: raw velocity (the only correct choice for Flux)."
    )

    @field_validator("prediction")
    @classmethod
    def _raw_only(cls, value: str) -> str:
        if value != "raw":
            raise ValueError(
                "sigma_scaled (kohya's default) turns the prediction into an x0 estimate but keeps the velocity target "
                "noise - latents, so the loss compares unlike things; lorastudio trains Flux with flux.prediction=raw only"
            )
        return value
