"""Key names of the kohya / A1111 / ComfyUI LoRA format, both ways.

Inside lorastudio a LoRA module is named canonically by `(component, diffusers path)`, e.g.
`("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")` or
`("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj")`. Text-encoder paths always
carry the `text_model.` prefix (the Hugging Face CLIP naming every other tool expects), even
though transformers 5's `CLIPTextModel` dropped that level.

A kohya key is `<stem>.lora_down.weight | .lora_up.weight | .alpha` where the stem is the
module path with `.` replaced by `_` plus a prefix. SD1.x/2.x UNet stems use diffusers block
names (kohya trains them on a diffusers-layout UNet); SDXL UNet stems use the LDM/SGM names
(`input_blocks_4_1_...`) because kohya trains SDXL on its SGM-layout UNet, and the SDXL text
encoders are `lora_te1_` / `lora_te2_`.

Also here: the kohya state dict both ways and the `ss_*` / `modelspec.*` header keys.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

FAMILIES = ("sd15", "sd2", "sdxl")
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
KOHYA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
KOHYA_KEY_RE = re.compile(r"^(lora_unet|lora_te[12]?)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")

# Names that contain "_" themselves. A stem is split on "_" and these are glued back
# together (longest first), which is how the dots are recovered without a model at hand.
_MULTI_WORD = {
    # diffusers UNet
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v",
    "to_out", "proj_in", "proj_out", "conv_shortcut", "time_emb_proj", "conv_in", "conv_out",
    "time_embedding", "linear_1", "linear_2", "add_embedding", "add_k_proj", "add_v_proj",
    "add_q_proj", "to_add_out", "conv_norm_out",
    # LDM / SGM UNet (SDXL kohya files)
    "input_blocks", "middle_block", "output_blocks", "in_layers", "out_layers", "emb_layers",
    "skip_connection", "time_embed", "label_emb",
    # Hugging Face CLIP
    "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "text_projection",
    "final_layer_norm",
}
_MAX_WORDS = max(len(word.split("_")) for word in _MULTI_WORD)

# ResnetBlock2D leaves: diffusers name -> LDM name.
_RESNET_LEAVES = {
    "conv1": "in_layers.2",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}


@dataclass(frozen=True)
class UNetLayout:
    """What the diffusers <-> LDM block renumbering needs to know about a UNet.

    The defaults are real SDXL's (2 layers per down block, up blocks 0 and 1 with attention).
    """

    layers_per_block: int = 2
    up_block_has_attention: tuple[bool, ...] = (True, True, False)

    @classmethod
    def from_unet_config(cls, config: Any) -> "UNetLayout":
        """Read the layout from a diffusers `UNet2DConditionModel.config`."""
        layers = config["layers_per_block"] if isinstance(config, dict) else config.layers_per_block
        up_types = config["up_block_types"] if isinstance(config, dict) else config.up_block_types
        if not isinstance(layers, int):
            raise ValueError("per-block layer counts that vary are not supported for LDM names")
        return cls(layers, tuple("CrossAttn" in name for name in up_types))


def kohya_prefix(component: str, family: str) -> str:
    """The kohya key prefix for a component of a model family."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family '{family}'; expected one of {', '.join(FAMILIES)}")
    if component == "unet":
        return "lora_unet_"
    if family == "sdxl":
        return {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}[component]
    if component == "text_encoder_2":
        raise ValueError(f"family '{family}' has one text encoder; a text_encoder_2 module cannot be written")
    return "lora_te_"


def to_stem(component: str, path: str, family: str, layout: UNetLayout | None = None) -> str:
    """The kohya stem for a module, e.g. `lora_unet_down_blocks_0_attentions_0_proj_in`."""
    if component == "unet" and family == "sdxl":
        path = diffusers_to_ldm(path, layout or UNetLayout())
    return kohya_prefix(component, family) + path.replace(".", "_")


def from_stem(stem: str, layout: UNetLayout | None = None) -> tuple[str, str]:
    """`(component, diffusers path)` for a kohya stem; LDM UNet names are mapped back."""
    for prefix, component in (("lora_unet_", "unet"), ("lora_te_", "text_encoder"),
                              ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2")):
        if stem.startswith(prefix):
            path = _glue(stem[len(prefix):])
            break
    else:
        raise ValueError(f"'{stem}' is not a kohya LoRA name (expected lora_unet_ / lora_te_ / lora_te1_ / lora_te2_)")
    if component == "unet" and _is_ldm(path):
        path = ldm_to_diffusers(path, layout or UNetLayout())
    if component != "unet" and not path.startswith("text_model."):
        path = "text_model." + path
    return component, path


def _glue(body: str) -> str:
    words = body.split("_")
    parts: list[str] = []
    i = 0
    while i < len(words):
        for width in range(min(_MAX_WORDS, len(words) - i), 0, -1):
            candidate = "_".join(words[i:i + width])
            if width == 1 or candidate in _MULTI_WORD:
                parts.append(candidate)
                i += width
                break
    return ".".join(parts)


def _is_ldm(path: str) -> bool:
    return path.split(".")[0] in {"input_blocks", "middle_block", "output_blocks", "out", "time_embed", "label_emb"}


def diffusers_to_ldm(path: str, layout: UNetLayout) -> str:
    """Rename a diffusers UNet module path to the LDM/SGM path kohya uses for SDXL."""
    per = layout.layers_per_block + 1
    for name, ldm in _TOP_LEVEL.items():
        if path == name:
            return ldm
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(attentions|resnets)\.(\d+)\.(.+)", path)
    if m:
        side, block, kind, index, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        if kind == "resnets":
            rest = _resnet_leaf_to_ldm(rest)
        inner = 1 if kind == "attentions" else 0
        if side == "down":
            return f"input_blocks.{1 + block * per + index}.{inner}.{rest}"
        return f"output_blocks.{block * per + index}.{inner}.{rest}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", path)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * per}.0.op"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", path)
    if m:
        block = int(m[1])
        inner = 2 if _up_has_attention(layout, block) else 1
        return f"output_blocks.{block * per + layout.layers_per_block}.{inner}.conv"
    m = re.fullmatch(r"mid_block\.(attentions|resnets)\.(\d+)\.(.+)", path)
    if m:
        if m[1] == "attentions":
            return f"middle_block.1.{m[3]}"
        return f"middle_block.{0 if m[2] == '0' else 2}.{_resnet_leaf_to_ldm(m[3])}"
    raise ValueError(f"UNet module '{path}' has no LDM (SDXL kohya) name")


def ldm_to_diffusers(path: str, layout: UNetLayout) -> str:
    """Inverse of `diffusers_to_ldm`."""
    per = layout.layers_per_block + 1
    for name, ldm in _TOP_LEVEL.items():
        if path == ldm:
            return name
    m = re.fullmatch(r"input_blocks\.(\d+)\.(\d+)\.(.+)", path)
    if m:
        index, inner, rest = int(m[1]), int(m[2]), m[3]
        if index % per == 0 and rest == "op":
            return f"down_blocks.{index // per - 1}.downsamplers.0.conv"
        block, layer = divmod(index - 1, per)
        if inner == 1:
            return f"down_blocks.{block}.attentions.{layer}.{rest}"
        return f"down_blocks.{block}.resnets.{layer}.{_resnet_leaf_from_ldm(rest)}"
    m = re.fullmatch(r"output_blocks\.(\d+)\.(\d+)\.(.+)", path)
    if m:
        (block, layer), inner, rest = divmod(int(m[1]), per), int(m[2]), m[3]
        if rest == "conv" and (inner == 2 or (inner == 1 and not _up_has_attention(layout, block))):
            return f"up_blocks.{block}.upsamplers.0.conv"
        if inner == 1:
            return f"up_blocks.{block}.attentions.{layer}.{rest}"
        return f"up_blocks.{block}.resnets.{layer}.{_resnet_leaf_from_ldm(rest)}"
    m = re.fullmatch(r"middle_block\.(\d)\.(.+)", path)
    if m:
        if m[1] == "1":
            return f"mid_block.attentions.0.{m[2]}"
        return f"mid_block.resnets.{0 if m[1] == '0' else 1}.{_resnet_leaf_from_ldm(m[2])}"
    raise ValueError(f"LDM UNet module '{path}' has no diffusers name")


def _up_has_attention(layout: UNetLayout, block: int) -> bool:
    if block >= len(layout.up_block_has_attention):
        raise ValueError(f"up block {block} is outside the UNet layout ({len(layout.up_block_has_attention)} up blocks)")
    return layout.up_block_has_attention[block]


def _resnet_leaf_to_ldm(leaf: str) -> str:
    if leaf not in _RESNET_LEAVES:
        raise ValueError(f"resnet module '{leaf}' has no LDM name")
    return _RESNET_LEAVES[leaf]


def _resnet_leaf_from_ldm(leaf: str) -> str:
    for name, ldm in _RESNET_LEAVES.items():
        if leaf == ldm:
            return name
    raise ValueError(f"LDM resnet module '{leaf}' has no diffusers name")


def kohya_state_dict(modules: Sequence[Any], family: str, layout: UNetLayout | None = None) -> dict[str, Any]:
    """kohya tensors for modules (objects with component, path, down, up, alpha); every stem gets its real alpha."""
    import torch

    state: dict[str, Any] = {}
    for m in modules:
        stem = to_stem(m.component, m.path, family, layout)
        if stem + ".alpha" in state:
            raise ValueError(f"two modules map to the kohya name {stem}")
        state[stem + ".lora_down.weight"] = m.down.contiguous()
        state[stem + ".lora_up.weight"] = m.up.contiguous()
        state[stem + ".alpha"] = torch.tensor(float(m.alpha), dtype=m.down.dtype)
    return state


def parse_kohya(tensors: dict[str, Any], layout: UNetLayout | None = None) -> list[tuple[str, str, Any, Any, float]]:
    """`(component, path, down, up, alpha)` per stem; a missing `.alpha` means alpha = rank (scale 1)."""
    stems = sorted({k.split(".", 1)[0] for k in tensors})
    known = {f"{s}{suffix}" for s in stems for suffix in KOHYA_SUFFIXES}
    unknown = sorted(set(tensors) - known)
    if unknown:
        raise ValueError(f"unsupported kohya keys (LoCon mid / DoRA / LoHa are not handled): {', '.join(unknown[:5])}")
    modules = []
    for stem in stems:
        down, up = tensors.get(stem + ".lora_down.weight"), tensors.get(stem + ".lora_up.weight")
        if down is None or up is None:
            raise ValueError(f"{stem}: needs both .lora_down.weight and .lora_up.weight")
        alpha_t = tensors.get(stem + ".alpha")
        alpha = float(alpha_t.item()) if alpha_t is not None else float(down.shape[0])
        component, path = from_stem(stem, layout)
        modules.append((component, path, down, up, alpha))
    return modules


def guess_family(stems: list[str], metadata: dict[str, str]) -> str:
    """Best guess of the model family of a kohya file from its names and `ss_*` metadata."""
    if any(s.startswith(("lora_te1_", "lora_te2_")) for s in stems) or any(
        s.startswith("lora_unet_") and _is_ldm(_glue(s[len("lora_unet_"):])) for s in stems
    ):
        return "sdxl"
    version = metadata.get("ss_base_model_version", "")
    if version.startswith("sdxl"):
        return "sdxl"
    if metadata.get("ss_v2") == "True" or version.startswith("sd_v2"):
        return "sd2"
    # OpenCLIP-H (SD2) has 23 encoder layers, CLIP-L (SD1.x) 12.
    layers = [int(m[1]) for s in stems if (m := re.match(r"lora_te_text_model_encoder_layers_(\d+)_", s))]
    return "sd2" if layers and max(layers) >= 12 else "sd15"


_FAMILY_SPEC = {
    "sd15": ("sd_v1", "stable-diffusion-v1/lora"),
    "sd2": ("sd_v2", "stable-diffusion-v2-512/lora"),
    "sdxl": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"),
}


# Header keys that describe the weights: ours are recomputed from the modules and a caller's
# value that disagrees is a real error. Everything else (modelspec.*, training notes, tag
# frequencies) is descriptive: a source file's value is kept and ours is only a default.
DERIVED_KEYS = ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
                "ss_base_model_version", "ss_v2")


def build_metadata(
    family: str, rank: int, alpha: float, modules: Sequence[Any], extra: dict[str, str] | None
) -> dict[str, str]:
    """kohya `ss_*` network keys and `modelspec.*` basics, merged with the caller's keys.

    `modules` are objects with `component`, `rank` and `alpha` (lora.LoraModule).

    All values must be `str` (the safetensors header is str -> str). A caller key among
    `DERIVED_KEYS` that contradicts the weights is an error rather than silently replaced;
    descriptive keys (`modelspec.sai_model_spec` 1.0.1 from sd-scripts, a title, a date)
    are the caller's and only filled in when missing.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family '{family}'; expected one of {', '.join(FAMILIES)}")
    extra = dict(extra or {})
    for key, value in extra.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata '{key}': keys and values must be str, got {type(value).__name__}")
    version, architecture = _FAMILY_SPEC[family]
    derived = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(int(rank)),
        "ss_network_alpha": str(float(alpha)),
        "ss_base_model_version": version,
        "ss_v2": str(family == "sd2"),
    }
    te = [m for m in modules if m.component != "unet"]
    if te:
        derived["ss_network_args"] = json.dumps({"text_encoder_dim": te[0].rank, "text_encoder_alpha": te[0].alpha})
    for key, value in derived.items():
        if key in extra and extra[key] != value:
            raise ValueError(f"metadata '{key}'={extra[key]!r} contradicts the weights ({value!r})")
    defaults = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": "lorastudio LoRA",
        "modelspec.date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    return {**defaults, **extra, **derived}
