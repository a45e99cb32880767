"""SDXL: conditioning = concat(CLIP-L[-2], CLIP-G[-2]) + pooled CLIP-G + size ids."""

from __future__ import annotations

from typing import Any

from lorastudio.models.families.sd15 import StableDiffusionFamily, tokenize


def encode_sdxl(text_encoders: list[Any], tokenizers: list[Any], captions: list[str]) -> dict[str, Any]:
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


def sdxl_unet_kwargs(cond: dict[str, Any], height: int, width: int) -> dict[str, Any]:
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


SDXL = StableDiffusionFamily(
    name="sdxl",
    default_prediction_type="epsilon",
    pipeline_class="StableDiffusionXLPipeline",
    text_encoder_folders=("text_encoder", "text_encoder_2"),
    tokenizer_folders=("tokenizer", "tokenizer_2"),
    text_encoder_classes=("CLIPTextModel", "CLIPTextModelWithProjection"),
    tokenizer_classes=("CLIPTokenizer", "CLIPTokenizer"),
    encoder=encode_sdxl,
    conditioning=sdxl_unet_kwargs,
)
