"""Diffusers folder -> one `.safetensors` in the original SD (LDM) / SDXL (SGM) layout.

diffusers can read single files (`from_single_file`) but has no writer, and its repo scripts
hard-code SD's four-level topology and miss the `text_model.` prefix under transformers 5
(reference/ti-dreambooth.md §3.3). This converter reads the block structure from the
models' own configs, so tiny test models and full-size ones take the same path:

- UNet -> `model.diffusion_model.*` (block renumbering from `kohya_keys.diffusers_to_ldm`,
  which reads layers per block and which up blocks have attention from the config);
- VAE -> `first_stage_model.*` (diffusers' up blocks reversed, attention as 1x1 convs);
- CLIP-L (SD1, SDXL TE1) -> `...transformer.text_model.*` whatever the transformers version;
- OpenCLIP (SD2 TE, SDXL TE2) -> `...model.*` with q/k/v fused and `text_projection` transposed.

Token rows past `vocab_rows` (added tokens) are cut: UIs load a 49,408-row table strictly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lorastudio.models.kohya_keys import UNetLayout, diffusers_to_ldm

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = {
    "sd15": ("cond_stage_model.transformer.",),
    "sd2": ("cond_stage_model.model.",),
    "sdxl": ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
}


class ConversionError(ValueError):
    """A tensor with no place in the single-file layout; the message names it."""


def _split(key: str) -> tuple[str, str]:
    module, _, leaf = key.rpartition(".")
    return module, leaf


def unet_key(key: str, layout: UNetLayout) -> str:
    """LDM name of one diffusers UNet tensor."""
    module, leaf = _split(key)
    if module == "conv_norm_out":
        return f"out.0.{leaf}"
    norm = re.fullmatch(r"(.*resnets\.\d+)\.norm([12])", module)
    if norm:
        ldm = diffusers_to_ldm(f"{norm[1]}.conv{norm[2]}", layout)
        return re.sub(r"(in_layers\.2|out_layers\.3)$", "in_layers.0" if norm[2] == "1" else "out_layers.0", ldm) + f".{leaf}"
    resnet_or_attn = re.fullmatch(r"((?:down|up)_blocks\.\d+\.(?:attentions|resnets)\.\d+|mid_block\.(?:attentions|resnets)\.\d+)\.(.+)", module)
    if resnet_or_attn and "resnets" in resnet_or_attn[1]:
        return diffusers_to_ldm(module, layout) + f".{leaf}"
    if resnet_or_attn:
        # Attention internals keep their names; only the block position changes.
        head = diffusers_to_ldm(f"{resnet_or_attn[1]}.proj_in", layout)[: -len(".proj_in")]
        return f"{head}.{resnet_or_attn[2]}.{leaf}"
    try:
        return diffusers_to_ldm(module, layout) + f".{leaf}"
    except ValueError:
        raise ConversionError(f"UNet tensor '{key}' has no place in the LDM layout") from None


_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_key(key: str, num_blocks: int) -> str:
    """LDM name of one diffusers VAE tensor."""
    module, leaf = _split(key)
    side, _, rest = module.partition(".")
    if side in ("quant_conv", "post_quant_conv"):
        return key
    if rest == "conv_norm_out":
        return f"{side}.norm_out.{leaf}"
    if rest in ("conv_in", "conv_out"):
        return key
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", rest)
    if m:
        level = int(m[2]) if m[1] == "down" else num_blocks - 1 - int(m[2])
        return f"{side}.{m[1]}.{level}.block.{m[3]}.{_VAE_RESNET.get(m[4], m[4])}.{leaf}"
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(down|up)samplers\.0\.conv", rest)
    if m:
        level = int(m[2]) if m[1] == "down" else num_blocks - 1 - int(m[2])
        return f"{side}.{m[1]}.{level}.{m[3]}sample.conv.{leaf}"
    m = re.fullmatch(r"mid_block\.resnets\.(\d)\.(\w+)", rest)
    if m:
        return f"{side}.mid.block_{int(m[1]) + 1}.{_VAE_RESNET.get(m[2], m[2])}.{leaf}"
    m = re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest)
    if m and m[1] in _VAE_ATTN:
        return f"{side}.mid.attn_1.{_VAE_ATTN[m[1]]}.{leaf}"
    raise ConversionError(f"VAE tensor '{key}' has no place in the LDM layout")


def clip_l_tensors(state: dict[str, Any], prefix: str, vocab_rows: int) -> dict[str, Any]:
    """HF CLIP text model -> `<prefix>text_model.*` (the names every UI expects)."""
    out = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        name = key if key.startswith(("text_model.", "text_projection")) else f"text_model.{key}"
        if name.endswith("token_embedding.weight"):
            value = value[:vocab_rows]
        out[prefix + name] = value
    return out


_OPEN_CLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def open_clip_tensors(state: dict[str, Any], prefix: str, vocab_rows: int) -> dict[str, Any]:
    """HF CLIP (with projection) -> OpenCLIP names: fused q/k/v, transposed text_projection."""
    import torch

    plain = {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}
    out: dict[str, Any] = {}
    fused: dict[tuple[int, str], dict[str, Any]] = {}
    for key, value in plain.items():
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if m:
            layer, module, leaf = int(m[1]), m[2], m[3]
            qkv = re.fullmatch(r"self_attn\.([qkv])_proj", module)
            if qkv:
                fused.setdefault((layer, leaf), {})[qkv[1]] = value
                continue
            if module not in _OPEN_CLIP_LAYER:
                raise ConversionError(f"text encoder tensor '{key}' has no OpenCLIP name")
            out[f"{prefix}transformer.resblocks.{layer}.{_OPEN_CLIP_LAYER[module]}.{leaf}"] = value
        elif key == "embeddings.token_embedding.weight":
            out[f"{prefix}token_embedding.weight"] = value[:vocab_rows]
        elif key == "embeddings.position_embedding.weight":
            out[f"{prefix}positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out[f"{prefix}ln_final.{key.rsplit('.', 1)[1]}"] = value
        elif key == "text_projection.weight":
            out[f"{prefix}text_projection"] = value.T.contiguous()
        else:
            raise ConversionError(f"text encoder tensor '{key}' has no OpenCLIP name")
    for (layer, leaf), parts in fused.items():
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{leaf}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def convert_components(family: str, unet: Any, vae: Any, text_encoders: list[Any], vocab_rows: list[int], dtype: Any = None) -> dict[str, Any]:
    """The single-file state dict of live components."""
    layout = UNetLayout.from_unet_config(unet.config)
    tensors = {UNET_PREFIX + unet_key(k, layout): v for k, v in unet.state_dict().items()}
    blocks = len(vae.config.block_out_channels)
    for key, value in vae.state_dict().items():
        name = vae_key(key, blocks)
        if ".mid.attn_1." in name and value.ndim == 2:
            value = value[:, :, None, None]  # the original VAE's attention is 1x1 convolutions
        tensors[VAE_PREFIX + name] = value
    prefixes = TEXT_PREFIXES[family]
    for i, (encoder, prefix, rows) in enumerate(zip(text_encoders, prefixes, vocab_rows, strict=True)):
        state = encoder.state_dict()
        open_clip = prefix.endswith(".model.")
        tensors.update(open_clip_tensors(state, prefix, rows) if open_clip else clip_l_tensors(state, prefix, rows))
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def write_single_file(path: Path, family: str, unet: Any, vae: Any, text_encoders: list[Any], vocab_rows: list[int], dtype: Any = None,
                      metadata: dict[str, str] | None = None) -> Path:
    """Write the single-file checkpoint (no optimizer state, added tokens cut)."""
    from safetensors.torch import save_file

    tensors = convert_components(family, unet, vae, text_encoders, vocab_rows, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt", **(metadata or {})})
    return path


def convert_folder(folder: Path, out: Path, family: str, dtype: Any = None) -> Path:
    """Convert a diffusers pipeline folder to a single file."""
    from lorastudio.models.tiny import pipeline_class

    pipe = pipeline_class("sdxl" if family == "sdxl" else "sd15").from_pretrained(str(folder))
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if family == "sdxl" else [])
    return write_single_file(out, family, pipe.unet, pipe.vae, encoders, [len(t) for t in tokenizers], dtype)
