"""SD 1.x and SD 2.x: one CLIP text encoder, conditioning is its last hidden state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def tokenize(tokenizer: Any, captions: list[str]) -> Any:
    """Pad/truncate to the tokenizer's full length, as the pipelines do at inference."""
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


@dataclass(frozen=True)
class StableDiffusionFamily:
    """SD1.5 (epsilon) and SD2 (v-prediction at 768 px); same conditioning."""

    name: str
    default_prediction_type: str
    pipeline_class: str = "StableDiffusionPipeline"
    text_encoder_folders: tuple[str, ...] = ("text_encoder",)
    tokenizer_folders: tuple[str, ...] = ("tokenizer",)

    def encode_captions(self, text_encoders: list[Any], tokenizers: list[Any], captions: list[str]) -> dict[str, Any]:
        """`{"hidden": [B, 77, D]}` from the text encoder's last layer."""
        encoder, tokenizer = text_encoders[0], tokenizers[0]
        ids = tokenize(tokenizer, captions).to(next(encoder.parameters()).device)
        return {"hidden": encoder(ids)[0]}

    def unet_kwargs(self, cond: dict[str, Any], height: int, width: int) -> dict[str, Any]:
        """Only cross-attention states; SD1/2 UNets take no extra conditioning."""
        return {"encoder_hidden_states": cond["hidden"]}


SD15 = StableDiffusionFamily(name="sd15", default_prediction_type="epsilon")
SD2 = StableDiffusionFamily(name="sd2", default_prediction_type="v_prediction")
