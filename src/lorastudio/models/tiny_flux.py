"""Tiny but real FLUX.1 pipelines (dev and schnell), built in code with no model hub.

The layout is Flux's own: a `FluxTransformer2DModel` fed 16 latent channels packed 2x2
(in_channels 64), a CLIP text encoder giving the pooled embedding, a T5 encoder giving the
token sequence, and a 16-channel VAE with Flux's shift/scale factors and x8 downsampling.
dev has the guidance embedding and a dynamically shifted scheduler; schnell has neither.

Both tokenizers are built offline: the shipped CLIP tokenizer (`models/assets`), and a T5
Unigram tokenizer made with the `tokenizers` library from the words of the shipped corpus
plus single characters (so any text encodes; pad 0, eos 1, unk 2 as in T5).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from lorastudio.models.tokenizer import CORPUS_PATH, tokenizer_files_dir

VARIANTS = ("dev", "schnell")
STAGES = ("transformer", "vae", "text_encoder", "text_encoder_2", "save")
T5_MAX_LENGTH = 512
# FLUX.1's autoencoder constants (diffusers scripts/convert_flux_to_diffusers.py).
FLUX_VAE_SCALING, FLUX_VAE_SHIFT = 0.3611, 0.1159


def scheduler_config(variant: str) -> dict[str, Any]:
    """The released FLUX.1-dev / schnell FlowMatchEulerDiscreteScheduler settings."""
    if variant == "dev":
        return {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                "base_image_seq_len": 256, "max_image_seq_len": 4096, "num_train_timesteps": 1000}
    return {"shift": 1.0, "use_dynamic_shifting": False, "num_train_timesteps": 1000}


def _t5_vocab() -> list[tuple[str, float]]:
    words = Counter(re.findall(r"[a-z]+", CORPUS_PATH.read_text(encoding="utf-8").lower()))
    total = sum(words.values())
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, math.log(n / total)) for w, n in sorted(words.items())]
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.,:;!?'\"()/&+"
    vocab += [(c, -20.0) for c in chars] + [("\u2581" + c, -21.0) for c in chars]
    return vocab


def build_t5_tokenizer(folder: Path | None = None, max_length: int = T5_MAX_LENGTH) -> Any:
    """A T5TokenizerFast (Unigram, Metaspace, `</s>` appended) built offline from the corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram(_t5_vocab(), unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tokenizer.json")
        tok.save(path)
        return T5TokenizerFast(tokenizer_file=path, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0,
                               model_max_length=max_length)


def component_configs(variant: str) -> dict[str, dict[str, Any]]:
    """Config dicts of every tiny Flux component (two double and two single blocks)."""
    from lorastudio.models.tiny import _text_config

    if variant not in VARIANTS:
        raise ValueError(f"unknown Flux variant {variant!r}; choose dev or schnell")
    return {
        "transformer": {"patch_size": 1, "in_channels": 64, "num_layers": 2, "num_single_layers": 2,
                        "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
                        "pooled_projection_dim": 32, "guidance_embeds": variant == "dev", "axes_dims_rope": (4, 4, 8)},
        "vae": {"in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": (8, 8, 8, 8),
                "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
                "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 32, "use_quant_conv": False,
                "use_post_quant_conv": False, "scaling_factor": FLUX_VAE_SCALING, "shift_factor": FLUX_VAE_SHIFT},
        "text_encoder": _text_config(hidden=32, layers=2, heads=4, intermediate=37, act="quick_gelu", projection=32),
        "text_encoder_2": {"vocab_size": len(_t5_vocab()), "d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 2,
                           "num_heads": 4, "relative_attention_num_buckets": 8, "feed_forward_proj": "gated-gelu",
                           "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0},
        "scheduler": scheduler_config(variant),
    }


def build_components(variant: str, *, seed: int = 0, on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Keyword arguments for `FluxPipeline`, with seeded random weights (global RNG untouched)."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    from lorastudio.models.tiny import _component_seed

    configs = component_configs(variant)
    factories: dict[str, Callable[[dict], Any]] = {
        "transformer": lambda c: diffusers.FluxTransformer2DModel(**c),
        "vae": lambda c: diffusers.AutoencoderKL(**c),
        "text_encoder": lambda c: CLIPTextModel(CLIPTextConfig(**c)),
        "text_encoder_2": lambda c: T5EncoderModel(T5Config(**c)),
    }
    built: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]):
        for name, factory in factories.items():
            torch.manual_seed(_component_seed(seed, name))
            built[name] = factory(configs[name]).eval()
            if on_stage is not None:
                on_stage(name)
    built["scheduler"] = diffusers.FlowMatchEulerDiscreteScheduler(**configs["scheduler"])
    built["tokenizer"] = CLIPTokenizer.from_pretrained(str(tokenizer_files_dir()))
    built["tokenizer_2"] = build_t5_tokenizer()
    return built


def build_tiny_flux(out_dir: Path | str, *, variant: str = "dev", seed: int = 0,
                    on_stage: Callable[[str], None] | None = None) -> Path:
    """Build a seeded tiny FLUX.1 `variant` pipeline and save it as a diffusers folder.

    `out_dir` must be missing or empty. The folder loads with `FluxPipeline.from_pretrained`
    offline and holds `lorastudio_model.json` (family flux, variant, seed).
    """
    from diffusers import FluxPipeline

    from lorastudio.models.tiny import INFO_FILE, _copy_slow_tokenizer_files, _prefix_text_model_keys

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder; choose a new output folder")
    pipe = FluxPipeline(**build_components(variant, seed=seed, on_stage=on_stage))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        pipe.save_pretrained(str(partial), safe_serialization=True)
        _copy_slow_tokenizer_files(partial / "tokenizer")
        _prefix_text_model_keys(partial / "text_encoder" / "model.safetensors")
        info = {"family": "flux", "variant": variant, "size": "tiny", "seed": seed, "prediction_type": "flow"}
        (partial / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    if on_stage is not None:
        on_stage("save")
    return out
