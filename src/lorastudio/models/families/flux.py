"""FLUX.1 (dev and schnell): a rectified-flow transformer, CLIP-L pooled + T5 sequence text.

Everything Flux-specific the training loop and sampler need lives here: which classes and
folders to load, caption encoding (CLIP pooled output + T5 hidden states at 512 tokens for
dev / 256 for schnell, unmasked as BFL trained), 2x2 latent packing with image/text position
ids, the guidance value fed to dev (None for schnell, whose transformer has no guidance
embedding), the flow-matching objective, LoRA target presets and the export formats.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorastudio.training.objectives import FlowMatchObjective

if TYPE_CHECKING:
    import torch

T5_LENGTHS = {"dev": 512, "schnell": 256}
# What the variants are deployed with (BFL's model cards); the server's defaults per request.
PIPELINE_DEFAULTS = {"dev": {"steps": 28, "guidance": 3.5}, "schnell": {"steps": 4, "guidance": 0.0}}
CLIP_LENGTH = 77

# Paths relative to one block. The attn preset is diffusers' train_dreambooth_lora_flux.py
# default (12 per double block, q/k/v per single block); all_linear is every Linear inside the
# blocks (ai-toolkit / kohya coverage, 14 + 6). Neither reaches the top-level proj_out/norm_out.
_DOUBLE_ATTN = r"attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)|ff(_context)?\.net\.(0\.proj|2)"
_SINGLE_ATTN = r"attn\.(to_q|to_k|to_v)"
FLUX_PRESETS: dict[str, tuple[str, str]] = {
    "attn": (_DOUBLE_ATTN, _SINGLE_ATTN),
    "attn_ff": (_DOUBLE_ATTN, rf"{_SINGLE_ATTN}|proj_mlp|proj_out"),
    "all_linear": (r".+", r".+"),
}
_T5_PRESETS = {
    "attn": r"encoder\.block\.\d+\.layer\.0\.SelfAttention\.(q|k|v|o)",
    "attn_ff": r"encoder\.block\.\d+\.layer\.(0\.SelfAttention\.(q|k|v|o)|1\.DenseReluDense\.(wi_0|wi_1|wo))",
    "all_linear": r"encoder\.block\.\d+\.layer\.(0\.SelfAttention\.(q|k|v|o)|1\.DenseReluDense\.(wi_0|wi_1|wo))",
}


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C]: 2x2 patches as tokens (FluxPipeline._pack_latents)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of `pack_latents` for latents of height `h` and width `w`."""
    b, _, d = tokens.shape
    x = tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def image_ids(h: int, w: int, device: Any = None, dtype: Any = None) -> torch.Tensor:
    """[(h/2)(w/2), 3] position ids `[0, row, col]` of the packed latent tokens."""
    import torch

    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def read_variant(model_path: str) -> str | None:
    """'dev' or 'schnell' from a local folder's transformer config (guidance_embeds), else None."""
    config = Path(model_path) / "transformer" / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return "dev" if data.get("guidance_embeds") else "schnell"


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


@dataclass(frozen=True)
class FluxFamily:
    """FLUX.1 with one run's settings (variant, guidance, T5 length, sigma sampling)."""

    variant: str = "dev"
    guidance: float = 1.0
    t5_max_length: int = 512
    train_t5: bool = False
    quantize: str = "none"
    objective: FlowMatchObjective = field(default_factory=FlowMatchObjective)
    name: str = "flux"
    pipeline_class: str = "FluxPipeline"
    img2img_pipeline_class: str = "FluxImg2ImgPipeline"
    default_prediction_type: str = "flow"
    text_encoder_folders: tuple[str, ...] = ("text_encoder", "text_encoder_2")
    tokenizer_folders: tuple[str, ...] = ("tokenizer", "tokenizer_2")
    text_encoder_classes: tuple[str, ...] = ("CLIPTextModel", "T5EncoderModel")
    tokenizer_classes: tuple[str, ...] = ("CLIPTokenizer", "T5TokenizerFast")
    denoiser_folder: str = "transformer"
    denoiser_class: str = "FluxTransformer2DModel"
    denoiser_arg: str = "transformer"
    train_scheduler_class: str = "FlowMatchEulerDiscreteScheduler"
    size_multiple: int = 16  # x8 VAE, then 2x2 packing

    def configured(self, cfg: Any) -> FluxFamily:
        """Apply `cfg.flux`; the variant comes from the config or the model's transformer config."""
        flux = cfg.flux
        variant = flux.variant if flux.variant != "auto" else (read_variant(cfg.model.path) or self.variant)
        family = self.with_variant(variant, guidance=flux.guidance, t5_max_length=flux.t5_max_length, train_t5=flux.train_t5,
                                   objective=FlowMatchObjective(flux.sigma_sampling, flux.sigmoid_scale, flux.shift))
        return replace(family, quantize=flux.quantize_base)

    def with_variant(self, variant: str, *, guidance: float | None = None, t5_max_length: int | None = None,
                     train_t5: bool = False, objective: FlowMatchObjective | None = None) -> FluxFamily:
        """This family for `variant` ('dev' | 'schnell') with the given overrides."""
        if variant not in T5_LENGTHS:
            raise ValueError(f"unknown FLUX.1 variant '{variant}'; use dev or schnell")
        return replace(self, variant=variant, guidance=self.guidance if guidance is None else guidance,
                       t5_max_length=t5_max_length or T5_LENGTHS[variant], train_t5=train_t5,
                       objective=objective or self.objective)

    def denoiser_load_kwargs(self) -> dict[str, Any]:
        """bitsandbytes quantisation of the frozen transformer when flux.quantize_base asks for it."""
        from lorastudio.models.flux_memory import quantization_kwargs

        return quantization_kwargs(self.quantize)

    def check_run(self, cfg: Any, has_gpu: bool) -> list[str]:
        """GPU-only settings on a CPU fail in one line; otherwise the memory estimate, before loading."""
        from lorastudio.models.flux_memory import estimate, gpu_only_problems

        problems = gpu_only_problems(cfg, has_gpu)
        if problems:
            raise ValueError(problems[0])
        notes = [estimate(cfg, self.t5_max_length).line("GPU" if has_gpu else "CPU")]
        if self.variant == "schnell":
            notes.append("FLUX.1-schnell is step-distilled: a LoRA trained on it directly tends to break the distillation "
                         "(noisy or blurry samples); consider training on dev, or a de-distillation adapter")
        return notes

    @property
    def text_cache_tag(self) -> str:
        """The T5 length and the (unmasked) padding policy change the embeddings."""
        return f"flux:t5_len={self.t5_max_length}:mask=none:clip=pooled"

    def training_metadata(self, uses_guidance: bool) -> dict[str, str]:
        """kohya-style `ss_*` keys describing how this adapter was trained."""
        obj = self.objective
        return {
            "ss_guidance_scale": str(self.guidance if uses_guidance else 0.0),
            "ss_timestep_sampling": obj.sampling,
            "ss_sigmoid_scale": str(obj.sigmoid_scale),
            "ss_discrete_flow_shift": str(obj.shift if obj.sampling == "shift" else "dynamic" if obj.sampling == "flux_shift" else 1.0),
            "ss_model_prediction_type": "raw",
            "ss_t5xxl_max_token_length": str(self.t5_max_length),
            "ss_apply_t5_attn_mask": "False",
            "lorastudio.flux_variant": self.variant,
        }

    def encode_captions(self, text_encoders: list[Any], tokenizers: list[Any], captions: list[str]) -> dict[str, Any]:
        """`{"hidden": [B, L, D_t5], "pooled": [B, D_clip]}` as FluxPipeline.encode_prompt builds them."""
        clip, t5 = text_encoders
        clip_tok, t5_tok = tokenizers
        clip_ids = clip_tok(captions, padding="max_length", max_length=CLIP_LENGTH, truncation=True,
                            return_tensors="pt").input_ids
        pooled = clip(clip_ids.to(next(clip.parameters()).device), output_hidden_states=False).pooler_output
        t5_ids = t5_tok(captions, padding="max_length", max_length=self.t5_max_length, truncation=True,
                        return_tensors="pt").input_ids
        hidden = t5(t5_ids.to(next(t5.parameters()).device), output_hidden_states=False)[0]
        return {"hidden": hidden, "pooled": pooled}

    def unet_kwargs(self, cond: dict[str, Any], height: int, width: int) -> dict[str, Any]:
        """Text conditioning for the transformer (ids and guidance are added in `predict`)."""
        return {"encoder_hidden_states": cond["hidden"], "pooled_projections": cond["pooled"]}

    def guidance_tensor(self, model: Any, batch: int, device: Any) -> torch.Tensor | None:
        """The guidance value per sample for dev (guidance_embeds), None for schnell."""
        import torch

        if not _unwrap(model).config.guidance_embeds:
            return None
        return torch.full((batch,), float(self.guidance), device=device, dtype=torch.float32)

    def predict(self, model: Any, noisy: torch.Tensor, sigmas: torch.Tensor, cond: dict[str, Any], height: int,
                width: int) -> torch.Tensor:
        """Pack, run the transformer at timestep = sigma (it scales by 1000 itself), unpack."""
        import torch

        b, _, h, w = noisy.shape
        hidden = cond["hidden"]
        out = model(
            hidden_states=pack_latents(noisy),
            timestep=sigmas.to(noisy.dtype),
            guidance=self.guidance_tensor(model, b, noisy.device),
            pooled_projections=cond["pooled"],
            encoder_hidden_states=hidden,
            txt_ids=torch.zeros(hidden.shape[1], 3, device=noisy.device, dtype=noisy.dtype),
            img_ids=image_ids(h, w, noisy.device, noisy.dtype),
            return_dict=False,
        )[0]
        return unpack_latents(out, h, w)

    def target_modules(self, model: Any, targets: str | list[str]) -> list[str]:
        """Transformer module names; presets match full block paths, lists match paths or in-block suffixes."""
        import torch.nn as nn

        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if isinstance(targets, str):
            if targets not in FLUX_PRESETS:
                raise ValueError(f"unknown Flux target preset '{targets}'; use one of {', '.join(FLUX_PRESETS)}")
            double, single = FLUX_PRESETS[targets]
            pattern = re.compile(rf"transformer_blocks\.\d+\.({double})|single_transformer_blocks\.\d+\.({single})")
            return [n for n in linears if pattern.fullmatch(n)]
        found: list[str] = []
        for target in targets:
            # A bare name such as proj_out matches inside the blocks only (PEFT's suffix rule would
            # also catch the top-level proj_out); a full path or an anchored regex such as
            # ^norm_out\.linear$ names a module outside them.
            hits = [n for n in linears if "transformer_blocks." in n and (n == target or n.endswith("." + target))]
            if not hits:
                try:
                    hits = [n for n in linears if re.fullmatch(target, n)]
                except re.error:
                    hits = []
            if not hits:
                raise ValueError(f"network.targets entry '{target}' matches no Linear of the Flux transformer")
            found.extend(h for h in hits if h not in found)
        return found

    def text_encoder_target_modules(self, index: int, encoder: Any, targets: str | list[str]) -> list[str]:
        """CLIP (index 0) as for SD; T5 (index 1) only when flux.train_t5, else none."""
        import torch.nn as nn

        from lorastudio.models.lora import _explicit_targets, text_encoder_target_modules

        if index == 0:
            return text_encoder_target_modules(encoder, targets)
        if not self.train_t5:
            return []
        if not isinstance(targets, str):
            return _explicit_targets(encoder, targets)
        pattern = re.compile(_T5_PRESETS[targets])
        return [n for n, m in encoder.named_modules() if isinstance(m, nn.Linear) and pattern.fullmatch(n)]

    def export_adapter(self, out_dir: Path, *, unet: Any, text_encoders: list[Any], rank: int, alpha: float,
                       formats: Any, metadata: dict[str, str] | None = None, **_: Any) -> dict[str, Path]:
        """diffusers/PEFT (float alpha in the header), kohya/BFL fused and alpha-baked PEFT files."""
        from lorastudio.models.flux_formats import export_flux_adapter

        extra = {**self.training_metadata(bool(_unwrap(unet).config.guidance_embeds)), **(metadata or {})}
        return export_flux_adapter(out_dir, variant=self.variant, transformer=unet, text_encoders=text_encoders,
                                   rank=rank, alpha=alpha, formats=formats, metadata=extra)

    def sampling_scheduler(self, config: Any, prediction_type: str) -> Any:
        """FlowMatchEuler from the model's config (dynamic shift for dev), as users deploy."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(config)

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Samples encode captions with the T5 length training used (512 dev, 256 schnell)."""
        return {"max_sequence_length": self.t5_max_length}


FLUX = FluxFamily()
