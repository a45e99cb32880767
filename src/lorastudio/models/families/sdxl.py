"""SDXL: two text encoders (penultimate layers concatenated), pooled embeddings, time ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lorastudio.models.families.sd15 import tokenize


@dataclass(frozen=True)
class SDXLFamily:
    """SDXL base: conditioning = concat(CLIP-L[-2], CLIP-G[-2]) + pooled CLIP-G + size ids."""

    name: str = "sdxl"
    default_prediction_type: str = "epsilon"
    pipeline_class: str = "StableDiffusionXLPipeline"
    text_encoder_folders: tuple[str, ...] = ("text_encoder", "text_encoder_2")
    tokenizer_folders: tuple[str, ...] = ("tokenizer", "tokenizer_2")

    def encode_captions(self, text_encoders: list[Any], tokenizers: list[Any], captions: list[str]) -> dict[str, Any]:
        """`{"hidden": [B, 77, D1+D2], "pooled": [B, P]}` as StableDiffusionXLPipeline builds them."""
        import torch

        hidden = []
        pooled = None
        for encoder, tokenizer in zip(text_encoders, tokenizers, strict=True):
            ids = tokenize(tokenizer, captions).to(next(encoder.parameters()).device)
            out = encoder(ids, output_hidden_states=True)
            # The pipeline uses the penultimate layer of both encoders and the pooled
            # projection of the last one; training must condition the same way.
            hidden.append(out.hidden_states[-2])
            pooled = out[0]
        return {"hidden": torch.cat(hidden, dim=-1), "pooled": pooled}

    def unet_kwargs(self, cond: dict[str, Any], height: int, width: int) -> dict[str, Any]:
        """Cross-attention states plus pooled text and (original, crop, target) size ids.

        Images are already cropped to their bucket, so original = target = bucket size and
        the crop offset is 0: the same ids the pipeline uses by default at inference.
        """
        import torch

        batch = cond["hidden"].shape[0]
        ids = torch.tensor([height, width, 0, 0, height, width], dtype=cond["hidden"].dtype, device=cond["hidden"].device)
        return {
            "encoder_hidden_states": cond["hidden"],
            "added_cond_kwargs": {"text_embeds": cond["pooled"], "time_ids": ids.repeat(batch, 1)},
        }


SDXL = SDXLFamily()
