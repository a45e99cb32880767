"""Helpers for the LoRA format tests: tiny real pipelines with a random, visible adapter."""

from __future__ import annotations

import numpy as np
import torch

from lorastudio.models import lora
from lorastudio.models.tiny import pipeline_class

# Real SDXL base UNet dimensions, for module trees built on the meta device.
SDXL_UNET = dict(
    sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)


def load_pipe(family: str, model_dir):
    """A fresh pipeline from a tiny model folder (the path real users take)."""
    pipe = pipeline_class(family).from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe) -> np.ndarray:
    """2 steps at 64x64 with a fixed seed, as float pixels in [0, 1]."""
    out = pipe("a photo of bibimbap", num_inference_steps=2, height=64, width=64,
               generator=torch.Generator().manual_seed(0), output_type="np")
    return out.images[0]


def text_encoders(pipe) -> list:
    """The pipeline's text encoders, in kohya order (te1, te2)."""
    return [te for te in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if te is not None]


def attach_random(pipe, *, targets="all_linear", rank=4, alpha=8.0, te_rank=2, te_alpha=1.0, seed=0) -> None:
    """Attach a random (non-zero B) adapter to the UNet and every text encoder.

    B is scaled down so the image changes visibly but stays far from saturation.
    """
    torch.manual_seed(seed)
    lora.attach_lora(pipe.unet, rank=rank, alpha=alpha, init_lora_weights=False,
                     target_modules=lora.unet_target_modules(pipe.unet, targets))
    for te in text_encoders(pipe):
        lora.attach_lora(te, rank=te_rank, alpha=te_alpha, init_lora_weights=False,
                         target_modules=lora.text_encoder_target_modules(te, targets))
    with torch.no_grad():
        for model in [pipe.unet, *text_encoders(pipe)]:
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.mul_(0.1)
