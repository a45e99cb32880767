"""Tiny but real Stable Diffusion pipelines, built in code with no model hub.

Tests and the demo need real diffusers/transformers components (so LoRA injection, key
formats and the training loop meet the same classes users load), but nothing can be
downloaded. This module builds them at the sizes diffusers' own pipeline tests use, with
random weights from a seed, and saves them in the standard diffusers folder layout so the
loading code path is the one real users exercise with a local folder.

Families: ``sd15`` (epsilon prediction, conv-projection UNet, quick-gelu CLIP),
``sd2`` (v-prediction, linear-projection UNet, gelu text encoder) and ``sdxl`` (two text
encoders, ``text_time`` added conditioning). Size ``full`` builds the real SD1.5
dimensions (about 1.07 B parameters, 4 GB on disk) with random weights, for benchmarks.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Any, Callable

from lorastudio.models.tokenizer import MODEL_MAX_LENGTH, tokenizer_files_dir

__all__ = [
    "FAMILIES",
    "SIZES",
    "build_components",
    "build_scheduler",
    "build_tiny_pipeline",
    "component_configs",
    "pipeline_class",
    "stage_names",
    "tokenizer_files_dir",
]

FAMILIES = ("sd15", "sd2", "sdxl")
SIZES = ("tiny", "full")
INFO_FILE = "lorastudio_model.json"

# The noise schedule every Stable Diffusion release trains with.
_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def _tokenizer_ids() -> dict[str, int]:
    """Vocabulary size and special-token ids of the shipped tokenizer (read from vocab.json)."""
    vocab = json.loads((tokenizer_files_dir() / "vocab.json").read_text(encoding="utf-8"))
    return {
        "vocab_size": len(vocab),
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
        # CLIP pads with end-of-text; pooling takes the first end-of-text, so this is safe.
        "pad_token_id": vocab["<|endoftext|>"],
    }


def _text_config(*, hidden: int, layers: int, heads: int, intermediate: int, act: str, projection: int) -> dict:
    return {
        **_tokenizer_ids(),
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "max_position_embeddings": MODEL_MAX_LENGTH,
        "hidden_act": act,
        "projection_dim": projection,
        "layer_norm_eps": 1e-5,
    }


def _tiny_vae(scaling_factor: float) -> dict:
    return {
        "block_out_channels": [32, 64],
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "latent_channels": 4,
        "sample_size": 64,
        "scaling_factor": scaling_factor,
    }


def _tiny_unet(cross_attention_dim: int, **extra: Any) -> dict:
    return {
        "block_out_channels": [32, 64],
        "layers_per_block": 2,
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "cross_attention_dim": cross_attention_dim,
        **extra,
    }


def _sd15_full() -> dict[str, dict]:
    """The real SD1.5 component dimensions (weights are random)."""
    text = _text_config(hidden=768, layers=12, heads=12, intermediate=3072, act="quick_gelu", projection=768)
    # The real CLIP ViT-L/14 embedding table has 49,408 rows; the shipped tokenizer uses
    # only the first ids, but the table size is part of the memory and speed profile.
    text["vocab_size"] = 49408
    return {
        "unet": {
            "block_out_channels": [320, 640, 1280, 1280],
            "layers_per_block": 2,
            "sample_size": 64,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
        },
        "vae": {
            "block_out_channels": [128, 256, 512, 512],
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4,
            "latent_channels": 4,
            "layers_per_block": 2,
            "sample_size": 512,
            "scaling_factor": 0.18215,
        },
        "text_encoder": text,
        "scheduler": {"_class": "PNDMScheduler", **_BETAS, "skip_prk_steps": True, "steps_offset": 1,
                      "set_alpha_to_one": False},
    }


def component_configs(family: str, size: str = "tiny") -> dict[str, dict]:
    """Return the config dict of every component of ``family`` at ``size``, without building.

    Keys: ``unet``, ``vae``, ``text_encoder`` (+ ``text_encoder_2`` for sdxl) and
    ``scheduler`` (its class name under ``_class``). Useful to check dimensions cheaply.
    """
    _check_choice(family, size)
    if size == "full":
        return _sd15_full()
    ddim = {"_class": "DDIMScheduler", **_BETAS, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
    if family == "sd15":
        return {
            "unet": _tiny_unet(32),
            "vae": _tiny_vae(0.18215),
            "text_encoder": _text_config(hidden=32, layers=5, heads=4, intermediate=37, act="quick_gelu", projection=32),
            "scheduler": {**ddim, "prediction_type": "epsilon"},
        }
    if family == "sd2":
        return {
            "unet": _tiny_unet(32, attention_head_dim=[2, 4], use_linear_projection=True),
            "vae": _tiny_vae(0.18215),
            "text_encoder": _text_config(hidden=32, layers=5, heads=4, intermediate=37, act="gelu", projection=32),
            "scheduler": {**ddim, "prediction_type": "v_prediction"},
        }
    text = _text_config(hidden=32, layers=5, heads=4, intermediate=37, act="gelu", projection=32)
    time_dim = 8
    return {
        # SDXL conditions on the concatenated hidden states of both encoders (32 + 32) and
        # adds the pooled, projected text_encoder_2 output plus six size/crop numbers, each
        # embedded to ``time_dim``: 32 + 6 * 8 = 80.
        "unet": _tiny_unet(
            64,
            attention_head_dim=[2, 4],
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            transformer_layers_per_block=[1, 2],
            projection_class_embeddings_input_dim=text["projection_dim"] + 6 * time_dim,
        ),
        "vae": _tiny_vae(0.13025),
        "text_encoder": dict(text),
        "text_encoder_2": dict(text),
        "scheduler": {"_class": "EulerDiscreteScheduler", **_BETAS, "steps_offset": 1,
                      "timestep_spacing": "leading", "prediction_type": "epsilon"},
    }


def _check_choice(family: str, size: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    if size == "full" and family != "sd15":
        raise ValueError(f"size 'full' is only available for sd15 (got family {family!r})")


def _component_seed(seed: int, name: str) -> int:
    """A per-component seed, so one component's weights do not depend on build order."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def build_components(
    family: str, *, seed: int = 0, size: str = "tiny", on_stage: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Instantiate every pipeline component with seeded random weights.

    Returns a dict of keyword arguments for the family's diffusers pipeline class
    (``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler`` and, for sdxl,
    ``text_encoder_2`` / ``tokenizer_2``). The global torch RNG state is left untouched.
    ``on_stage(name)`` is called after each model is built (for progress display).
    """
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    configs = component_configs(family, size)
    factories: dict[str, Callable[[dict], Any]] = {
        "unet": lambda cfg: diffusers.UNet2DConditionModel(**cfg),
        "vae": lambda cfg: diffusers.AutoencoderKL(**cfg),
        "text_encoder": lambda cfg: CLIPTextModel(CLIPTextConfig(**cfg)),
        "text_encoder_2": lambda cfg: CLIPTextModelWithProjection(CLIPTextConfig(**cfg)),
    }
    built: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]):
        for name, factory in factories.items():
            if name not in configs:
                continue
            torch.manual_seed(_component_seed(seed, name))
            built[name] = factory(configs[name]).eval()
            if on_stage is not None:
                on_stage(name)
    built["scheduler"] = build_scheduler(family, size)
    built["tokenizer"] = CLIPTokenizer.from_pretrained(str(tokenizer_files_dir()))
    if family == "sdxl":
        built["tokenizer_2"] = CLIPTokenizer.from_pretrained(str(tokenizer_files_dir()))
    return built


def build_scheduler(family: str, size: str = "tiny"):
    """A fresh scheduler of ``family`` (never share one between concurrent generations)."""
    import diffusers

    config = dict(component_configs(family, size)["scheduler"])
    return getattr(diffusers, config.pop("_class"))(**config)


def pipeline_class(family: str):
    """The diffusers pipeline class that loads a folder of ``family``."""
    import diffusers

    _check_choice(family, "tiny")
    return diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline


def build_tiny_pipeline(
    family: str,
    out_dir: Path | str,
    *,
    seed: int = 0,
    size: str = "tiny",
    on_stage: Callable[[str], None] | None = None,
) -> Path:
    """Build a seeded random pipeline of ``family`` and save it as a diffusers folder.

    ``out_dir`` must be missing or empty (nothing is ever overwritten). The folder holds
    ``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
    ``scheduler/`` (+ ``text_encoder_2/`` and ``tokenizer_2/`` for sdxl) and
    ``lorastudio_model.json`` (family, size, seed). It loads with
    ``StableDiffusionPipeline.from_pretrained`` (sd15, sd2) or
    ``StableDiffusionXLPipeline.from_pretrained`` (sdxl). Same seed, same weights.
    ``on_stage(name)`` is called after each model is built and after saving (``"save"``).
    """
    _check_choice(family, size)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder; choose a new output folder")
    components = build_components(family, seed=seed, size=size, on_stage=on_stage)
    extra = {} if family == "sdxl" else {"safety_checker": None, "feature_extractor": None,
                                          "requires_safety_checker": False}
    pipe = pipeline_class(family)(**components, **extra)
    # Save into a hidden sibling and rename at the end, so an interrupted build never
    # leaves a half-written model folder that looks complete.
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _save_pipeline(pipe, partial)
        info = {"family": family, "size": size, "seed": seed,
                "prediction_type": components["scheduler"].config.prediction_type}
        (partial / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    if on_stage is not None:
        on_stage("save")
    return out


def stage_names(family: str) -> list[str]:
    """The stage names ``build_tiny_pipeline`` reports, in order (for progress totals)."""
    models = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    return models + ["save"]


def _save_pipeline(pipe: Any, out: Path) -> None:
    """Save in diffusers layout, then make the folder readable by transformers 4.x tools too."""
    pipe.save_pretrained(str(out), safe_serialization=True)
    for sub in ("tokenizer", "tokenizer_2"):
        if (out / sub).is_dir():
            _copy_slow_tokenizer_files(out / sub)
    for sub in ("text_encoder", "text_encoder_2"):
        if (out / sub).is_dir():
            _prefix_text_model_keys(out / sub / "model.safetensors")


def _copy_slow_tokenizer_files(tokenizer_dir: Path) -> None:
    """Add vocab.json + merges.txt, which transformers 5 no longer writes but 4.x readers need."""
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(tokenizer_files_dir() / name, tokenizer_dir / name)


def _prefix_text_model_keys(weights: Path) -> None:
    """Rename CLIPTextModel weights to the ``text_model.`` names of transformers 4.x.

    transformers 5 saves them without the prefix, and 4.x (used by kohya sd-scripts and
    other tools) then silently re-initialises the whole encoder. transformers 5 accepts
    both spellings on load, so the prefixed names work everywhere.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {}
        for key in f.keys():
            renamed = key if key.startswith(("text_model.", "text_projection.")) else f"text_model.{key}"
            tensors[renamed] = f.get_tensor(key)
    save_file(tensors, str(weights), metadata=metadata)


def save_tiny_controlnet(model_dir: Path, out: Path, seed: int = 0) -> Path:
    """A canny-style ControlNet for a tiny SD model's UNet, saved as a diffusers folder at `out`.

    Its zero convolutions get small random weights (a fresh ControlNet's are zero, which would make
    the control a no-op), so tests and demos can see that conditioning changes the output.
    """
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(model_dir), subfolder="unet")
    vae = json.loads((Path(model_dir) / "vae" / "config.json").read_text(encoding="utf-8"))
    downsamples = len(vae["block_out_channels"]) - 1  # the control image must land on the latent grid
    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(8 * 2**i for i in range(downsamples + 1)))
    with torch.no_grad():
        for name, param in net.named_parameters():
            if "zero_conv" in name or "controlnet_down_blocks" in name or "controlnet_mid_block" in name:
                param.normal_(0, 0.05)
    net.save_pretrained(str(out))
    return Path(out)
