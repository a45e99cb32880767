"""LoRA networks: pick target modules, attach them with PEFT, export, read and convert files.

Two file formats, both `.safetensors`:
- kohya (A1111 / ComfyUI): `lora_unet_*` / `lora_te*_*` stems with `.lora_down.weight`,
  `.lora_up.weight` and `.alpha` holding the *trained* alpha; names in `kohya_keys`.
- diffusers / PEFT: `unet.<path>.lora_A.weight` / `.lora_B.weight`, with the per-component
  LoraConfig (r, lora_alpha, rank/alpha patterns) in the `lora_adapter_metadata` header so
  `pipe.load_lora_weights` restores alpha != rank correctly.

Inside, a file is a list of `LoraModule(component, diffusers path, down, up, alpha)`; both
formats are a renaming of that list, so conversion is lossless either way.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from lorastudio.models.lora_formats import (
    FORMATS,
    UnsupportedLoraError,
    detect_format,
    parse_old_diffusers,
    unsupported_message,
)
from lorastudio.models.weights_file import WeightsFileError, is_pickle_path, read_header, refuse_pickle
from lorastudio.models.kohya_keys import (
    COMPONENTS,
    DERIVED_KEYS,
    FAMILIES,
    UNetLayout,
    build_metadata,
    from_stem,
    guess_family,
    kohya_state_dict,
    parse_kohya,
    to_stem,
)

if TYPE_CHECKING:
    import torch

LORA_FORMATS = ("kohya", "diffusers")
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # the header key diffusers reads LoraConfig from


@dataclass(frozen=True)
class TargetPreset:
    """Which modules a preset adapts.

    `unet_pattern` is matched against paths relative to each `Transformer2DModel`
    (None = every Linear and 1x1 Conv2d there, kohya's default coverage);
    `text_encoder_pattern` against paths relative to each CLIP encoder layer.
    """

    description: str
    unet_pattern: str | None
    text_encoder_pattern: str


_ATTN = r"transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)"
_TE_ATTN = r"self_attn\.(q|k|v|out)_proj"
_TE_ALL = rf"({_TE_ATTN}|mlp\.fc[12])"

TARGET_PRESETS: dict[str, TargetPreset] = {
    "attn": TargetPreset("to_q/to_k/to_v/to_out.0 of attn1 and attn2 (the diffusers examples)", _ATTN, _TE_ATTN),
    "attn_ff": TargetPreset(
        "attention projections plus the feed-forward ff.net.0.proj and ff.net.2",
        rf"({_ATTN}|transformer_blocks\.\d+\.ff\.net\.(0\.proj|2))",
        _TE_ALL,
    ),
    "all_linear": TargetPreset(
        "kohya's default: every Linear and 1x1 Conv2d inside the UNet's transformer blocks", None, _TE_ALL
    ),
}


class PickleRefusedError(ValueError):
    """A pickle-based adapter file was given without the explicit opt-in."""


# ---------------------------------------------------------------------------- targets


def _preset(name: str) -> TargetPreset:
    if name not in TARGET_PRESETS:
        raise ValueError(f"unknown target preset '{name}'; choose one of {', '.join(TARGET_PRESETS)} or give a module list")
    return TARGET_PRESETS[name]


def _explicit_targets(model: Any, names: Sequence[str]) -> list[str]:
    import torch.nn as nn

    found: list[str] = []
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for target in names:
        hits = [n for n, _ in candidates if n == target or n.endswith("." + target)]
        if not hits:
            raise ValueError(f"target module '{target}' matches no Linear or Conv2d in {type(model).__name__}")
        found.extend(h for h in hits if h not in found)
    return found


def unet_target_modules(unet: Any, targets: str | list[str]) -> list[str]:
    """Full module names of `unet` a preset (or an explicit list of names/suffixes) adapts."""
    if not isinstance(targets, str):
        return _explicit_targets(unet, targets)
    import torch.nn as nn
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    preset = _preset(targets)
    names: list[str] = []
    for block_name, block in unet.named_modules():
        if not isinstance(block, Transformer2DModel):
            continue
        for rel, module in block.named_modules():
            is_linear = isinstance(module, nn.Linear)
            is_1x1 = isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1)
            if rel and (is_linear or is_1x1):
                if preset.unet_pattern is None or re.fullmatch(preset.unet_pattern, rel):
                    names.append(f"{block_name}.{rel}")
    if not names:
        raise ValueError(f"preset '{targets}' matches no module of this UNet (no Transformer2DModel blocks?)")
    return names


def text_encoder_target_modules(text_encoder: Any, targets: str | list[str]) -> list[str]:
    """Full module names of a CLIP text encoder a preset (or an explicit list) adapts."""
    if not isinstance(targets, str):
        return _explicit_targets(text_encoder, targets)
    import torch.nn as nn

    pattern = re.compile(rf"(.*\.)?encoder\.layers\.\d+\.{_preset(targets).text_encoder_pattern}")
    names = [n for n, m in text_encoder.named_modules() if isinstance(m, nn.Linear) and pattern.fullmatch(n)]
    if not names:
        raise ValueError(f"preset '{targets}' matches no module of {type(text_encoder).__name__}")
    return names


def attach_lora(
    model: Any,
    *,
    rank: int,
    alpha: float,
    target_modules: list[str],
    dropout: float = 0.0,
    init_lora_weights: bool | str = True,
    adapter_name: str = "default",
) -> None:
    """Inject a PEFT LoRA adapter into `model` (a diffusers UNet or a transformers text encoder).

    `init_lora_weights=True` starts with B = 0 (the adapter is a no-op until trained);
    False keeps random A and B, which tests use so the adapter visibly changes outputs.
    """
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if not target_modules:
        raise ValueError("target_modules is empty; nothing to adapt")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        lora_dropout=dropout,
        init_lora_weights=init_lora_weights,
    )
    model.add_adapter(config, adapter_name=adapter_name)


# ---------------------------------------------------------------------------- modules


@dataclass
class LoraModule:
    """One adapted module: ΔW = alpha / rank · up @ down."""

    component: str  # "unet" | "text_encoder" | "text_encoder_2"
    path: str  # diffusers module path; text encoders always with "text_model."
    down: "torch.Tensor"  # [r, in] or [r, in, kh, kw]
    up: "torch.Tensor"  # [out, r] or [out, r, 1, 1]
    alpha: float

    @property
    def rank(self) -> int:
        """The LoRA rank, read from the down weight."""
        return int(self.down.shape[0])

    def delta(self) -> "torch.Tensor":
        """The weight change this module applies at multiplier 1, flattened to [out, in·kh·kw]."""
        return (self.alpha / self.rank) * (self.up.flatten(1).float() @ self.down.flatten(1).float())


@dataclass
class LoraFile:
    """A LoRA file read from disk, format-independent."""

    path: Path
    format: str  # "kohya" | "diffusers"
    family: str
    tensors: dict[str, "torch.Tensor"]
    metadata: dict[str, str]
    modules: list[LoraModule] = field(default_factory=list)
    coverage: str | None = None  # Flux: how the file's keys mapped onto modules

    @property
    def rank(self) -> int:
        """The most common rank."""
        return Counter(m.rank for m in self.modules).most_common(1)[0][0]

    @property
    def alpha(self) -> float:
        """The most common alpha."""
        return Counter(m.alpha for m in self.modules).most_common(1)[0][0]

    def block_counts(self) -> dict[str, int]:
        """Number of adapted modules per UNet block / text encoder."""
        counts: Counter[str] = Counter()
        for m in self.modules:
            parts = m.path.split(".")
            if m.component != "unet":
                group = m.component
            elif parts[0] in ("down_blocks", "up_blocks"):
                group = f"unet.{parts[0]}.{parts[1]}"
            else:
                group = f"unet.{parts[0]}"
            counts[group] += 1
        return dict(sorted(counts.items()))

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (what `lorastudio inspect --json` prints)."""
        ranks = sorted({m.rank for m in self.modules})
        alphas = sorted({m.alpha for m in self.modules})
        return {
            "file": str(self.path),
            "format": self.format,
            "format_label": FORMATS[self.format].label,
            "family": self.family,
            "modules": len(self.modules),
            "modules_per_block": self.block_counts(),
            "rank": self.rank,
            "alpha": self.alpha,
            "ranks": ranks,
            "alphas": alphas,
            "rank_varies": len(ranks) > 1,
            "alpha_varies": len(alphas) > 1,
            "metadata": dict(sorted(self.metadata.items())),
            **({"coverage": self.coverage} if self.coverage else {}),
        }


def collect_lora_modules(model: Any, component: str, adapter_name: str = "default") -> list[LoraModule]:
    """Copy the LoRA weights of one adapter out of a PEFT-injected model."""
    from peft.tuners.lora import LoraLayer

    if component not in COMPONENTS:
        raise ValueError(f"unknown component '{component}'; expected one of {', '.join(COMPONENTS)}")
    modules = []
    for name, layer in model.named_modules():
        if not isinstance(layer, LoraLayer) or adapter_name not in layer.lora_A:
            continue
        if layer.use_dora.get(adapter_name):
            raise ValueError(f"{name}: DoRA adapters cannot be exported as plain LoRA")
        rank, alpha = layer.r[adapter_name], float(layer.lora_alpha[adapter_name])
        if abs(layer.scaling[adapter_name] - alpha / rank) > 1e-9:
            raise ValueError(f"{name}: scaling is not alpha/rank (rsLoRA?); kohya loaders cannot express it")
        path = name if component == "unet" or name.startswith("text_model.") else f"text_model.{name}"
        modules.append(LoraModule(
            component, path,
            layer.lora_A[adapter_name].weight.detach().cpu().clone().contiguous(),
            layer.lora_B[adapter_name].weight.detach().cpu().clone().contiguous(),
            alpha,
        ))
    return modules


# ---------------------------------------------------------------------------- state dicts


def modules_from_kohya(tensors: dict[str, Any], layout: UNetLayout | None = None) -> list[LoraModule]:
    """Parse kohya tensors; a missing `.alpha` means alpha = rank (scale 1), as A1111 and ComfyUI do."""
    return [LoraModule(*entry) for entry in parse_kohya(tensors, layout)]


def _te_target(path: str) -> str:
    # transformers 5's CLIPTextModel has no `text_model.` level; PEFT matches target names
    # as suffixes, so leaving the prefix out matches both layouts.
    return path.removeprefix("text_model.")


def diffusers_state_dict(modules: list[LoraModule]) -> tuple[dict[str, Any], dict[str, Any]]:
    """PEFT-style tensors plus the per-component LoraConfig that diffusers reads from the header."""
    state: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for component in COMPONENTS:
        group = [m for m in modules if m.component == component]
        if not group:
            continue
        rank = Counter(m.rank for m in group).most_common(1)[0][0]
        alpha = Counter(m.alpha for m in group).most_common(1)[0][0]
        names = {m.path: (_te_target(m.path) if component != "unet" else m.path) for m in group}
        config.update({
            f"{component}.r": rank,
            f"{component}.lora_alpha": alpha,
            f"{component}.target_modules": sorted(names.values()),
            f"{component}.rank_pattern": {names[m.path]: m.rank for m in group if m.rank != rank},
            f"{component}.alpha_pattern": {names[m.path]: m.alpha for m in group if m.alpha != alpha},
        })
        for m in group:
            state[f"{component}.{m.path}.lora_A.weight"] = m.down.contiguous()
            state[f"{component}.{m.path}.lora_B.weight"] = m.up.contiguous()
    return state, config


def _pattern_value(patterns: dict[str, Any], path: str) -> Any:
    for key, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{key}", path):
            return value
    return None


def modules_from_diffusers(tensors: dict[str, Any], metadata: dict[str, str]) -> list[LoraModule]:
    """Parse PEFT-style diffusers tensors; alpha comes from `.alpha` keys, the header config, else rank."""
    config = json.loads(metadata[ADAPTER_METADATA_KEY]) if ADAPTER_METADATA_KEY in metadata else {}
    modules, used = [], set()
    for key in sorted(tensors):
        if not key.endswith(".lora_A.weight"):
            continue
        base = key[: -len(".lora_A.weight")]
        component, _, path = base.partition(".")
        if component not in COMPONENTS:
            raise ValueError(f"{key}: expected a unet. / text_encoder. / text_encoder_2. prefix")
        up_key = base + ".lora_B.weight"
        if up_key not in tensors:
            raise ValueError(f"{key}: matching {up_key} is missing")
        down, up = tensors[key], tensors[up_key]
        used.update({key, up_key})
        if base + ".alpha" in tensors:
            alpha = float(tensors[base + ".alpha"].item())
            used.add(base + ".alpha")
        elif f"{component}.lora_alpha" in config:
            pattern = _pattern_value(config.get(f"{component}.alpha_pattern") or {}, path)
            alpha = float(pattern if pattern is not None else config[f"{component}.lora_alpha"])
        else:
            alpha = float(down.shape[0])  # diffusers' own rule without a config: lora_alpha = r
        if component != "unet" and not path.startswith("text_model."):
            path = "text_model." + path
        modules.append(LoraModule(component, path, down, up, alpha))
    leftover = sorted(set(tensors) - used)
    if leftover:
        raise ValueError(f"unsupported diffusers LoRA keys: {', '.join(leftover[:5])}")
    return modules


# ---------------------------------------------------------------------------- files


def _save_safetensors(tensors: dict[str, Any], path: Path, metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a crash never leaves a half-written adapter.
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def write_kohya(path: Path, modules: list[LoraModule], family: str, metadata: dict[str, str],
                layout: UNetLayout | None = None) -> Path:
    """Write a kohya-format file (A1111 / ComfyUI / diffusers all load it)."""
    return _save_safetensors(kohya_state_dict(modules, family, layout), Path(path), metadata)


def write_diffusers(path: Path, modules: list[LoraModule], metadata: dict[str, str]) -> Path:
    """Write a diffusers/PEFT-format file with the LoraConfig in its header."""
    tensors, config = diffusers_state_dict(modules)
    header = {**metadata, "format": "pt", ADAPTER_METADATA_KEY: json.dumps(config, sort_keys=True)}
    return _save_safetensors(tensors, Path(path), header)


def export_adapter(
    out_dir: Path,
    *,
    family: str,
    unet: Any,
    text_encoders: list,
    rank: int,
    alpha: float,
    formats: Sequence[str] = ("kohya", "diffusers"),
    metadata: dict[str, str] | None = None,
    adapter_name: str = "default",
) -> dict[str, Path]:
    """Save the adapter attached to `unet` (and text encoders) in the requested formats.

    Writes `out_dir/lora.safetensors` (kohya) and `out_dir/diffusers/pytorch_lora_weights.safetensors`
    (load with `pipe.load_lora_weights(out_dir / "diffusers")`). `rank`/`alpha` are the UNet
    network's and must agree with the attached layers; text encoders keep their own.
    """
    unknown = [f for f in formats if f not in LORA_FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown export format(s) {unknown}; expected a subset of {', '.join(LORA_FORMATS)}")
    if len(text_encoders) > len(COMPONENTS) - 1:
        raise ValueError(f"at most {len(COMPONENTS) - 1} text encoders, got {len(text_encoders)}")
    modules = collect_lora_modules(unet, "unet", adapter_name)
    for te, component in zip(text_encoders, COMPONENTS[1:]):
        if te is not None:
            modules += collect_lora_modules(te, component, adapter_name)
    if not modules:
        raise ValueError(f"no LoRA adapter '{adapter_name}' is attached to the given models")
    mismatched = [m.path for m in modules if m.component == "unet" and (m.rank != rank or m.alpha != float(alpha))]
    if mismatched:
        raise ValueError(f"UNet module {mismatched[0]} has rank/alpha different from rank={rank}, alpha={alpha}")
    header = build_metadata(family, rank, alpha, modules, metadata)
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    if "kohya" in formats:
        layout = UNetLayout.from_unet_config(unet.config) if family == "sdxl" else None
        written["kohya"] = write_kohya(out_dir / "lora.safetensors", modules, family, header, layout)
    if "diffusers" in formats:
        written["diffusers"] = write_diffusers(out_dir / "diffusers" / DIFFUSERS_WEIGHT_NAME, modules, header)
    return written


def _load_tensors(path: Path, allow_pickle: bool) -> tuple[dict[str, Any], dict[str, str]]:
    if is_pickle_path(path):
        try:
            refuse_pickle(path, allow_pickle, "LoRA file")
        except WeightsFileError as error:
            raise PickleRefusedError(str(error)) from None
        import torch

        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many kinds here; none should surface as a traceback
            raise WeightsFileError(f"{path}: cannot read it as a PyTorch file ({type(error).__name__})") from None
        data = data.get("state_dict", data) if isinstance(data, dict) else data
        if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
            raise ValueError(f"{path}: not a flat dict of tensors")
        return dict(data), {}
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path}: LoRA files must be .safetensors (got '{path.suffix or 'no suffix'}')")
    read_header(path)  # one clear line for pickles, junk and truncated files before safetensors sees them
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return tensors, metadata


def resolve_lora_path(path: Path | str) -> Path:
    """A LoRA file, or a diffusers folder holding `pytorch_lora_weights.safetensors`."""
    path = Path(path)
    if path.is_dir():
        candidate = path / DIFFUSERS_WEIGHT_NAME
        if not candidate.is_file():
            raise FileNotFoundError(f"{path} is a folder without {DIFFUSERS_WEIGHT_NAME}")
        return candidate
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such LoRA file")
    return path


def read_lora(path: Path | str, *, allow_pickle: bool = False, family: str | None = None,
              layout: UNetLayout | None = None) -> LoraFile:
    """Read a LoRA file (kohya, LoCon, diffusers old or new) or a diffusers folder into a `LoraFile`.

    Raises `UnsupportedLoraError` naming the style for files it cannot parse (LoHa, LoKr,
    DoRA, ...), and `WeightsFileError` for files that are not safetensors at all.
    """
    file = resolve_lora_path(path)
    tensors, metadata = _load_tensors(file, allow_pickle)
    if not tensors:
        raise ValueError(f"{file}: holds no tensors")
    from lorastudio.models.flux_formats import looks_like_flux, parse_flux_lora

    if family == "flux" or looks_like_flux(list(tensors)):
        modules, report = parse_flux_lora(tensors, metadata)
        return LoraFile(file, "flux", "flux", tensors, metadata, modules, coverage=report.line())
    fmt = detect_format(tensors, {k: tuple(v.shape) for k, v in tensors.items()}, metadata)
    if not fmt.readable:
        stems = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors}
        raise UnsupportedLoraError(unsupported_message(file, fmt, len(stems), min(tensors)), fmt)
    if fmt.name in ("kohya", "kohya-locon"):
        family = family or guess_family([k.split(".", 1)[0] for k in tensors], metadata)
        modules = modules_from_kohya(tensors, layout)
    elif fmt.name == "diffusers":
        modules = modules_from_diffusers(tensors, metadata)
        family = family or _guess_diffusers_family(modules, metadata)
    else:
        modules = [LoraModule(*entry) for entry in parse_old_diffusers(tensors)]
        family = family or _guess_diffusers_family(modules, metadata)
    if family not in FAMILIES:
        raise ValueError(f"unknown family '{family}'; expected one of {', '.join(FAMILIES)}")
    return LoraFile(file, fmt.name, family, tensors, metadata, modules)


def _guess_diffusers_family(modules: list[LoraModule], metadata: dict[str, str]) -> str:
    if any(m.component == "text_encoder_2" for m in modules):
        return "sdxl"
    version = metadata.get("ss_base_model_version", "")
    if version.startswith("sdxl"):
        return "sdxl"
    return "sd2" if metadata.get("ss_v2") == "True" else "sd15"


def default_output(path_in: Path, to: str) -> Path:
    """Where `convert` writes when no output is given: beside the input, never onto it."""
    path_in = Path(path_in)
    stem = path_in.name if path_in.is_dir() else path_in.stem
    if to == "kohya":
        return path_in.parent / f"{stem}-kohya.safetensors"
    return path_in.parent / f"{stem}-diffusers" / DIFFUSERS_WEIGHT_NAME


def convert(path_in: Path | str, path_out: Path | str | None, to: str, family: str | None = None, *,
            layout: UNetLayout | None = None, overwrite: bool = False, allow_pickle: bool = False) -> Path:
    """Convert a LoRA file to `to` ("kohya" | "diffusers"); returns the written file.

    A diffusers output that is not a `.safetensors` path is a folder receiving
    `pytorch_lora_weights.safetensors`. Existing outputs are kept unless `overwrite`.
    """
    if to not in LORA_FORMATS:
        raise ValueError(f"unknown target format '{to}'; expected one of {', '.join(LORA_FORMATS)}")
    source = read_lora(path_in, allow_pickle=allow_pickle, family=family, layout=layout)
    out = Path(path_out) if path_out is not None else default_output(Path(path_in), to)
    if out.suffix.lower() != ".safetensors":
        if to == "kohya":
            raise ValueError(f"{out}: a kohya output must be a .safetensors file")
        out = out / DIFFUSERS_WEIGHT_NAME
    if out.resolve() == source.path.resolve():
        raise ValueError(f"{out}: the output would replace the input")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    # sshs_* are hashes of the old file's bytes and would be stale; the format keys are ours.
    carried = {k: v for k, v in source.metadata.items()
               if not k.startswith("sshs_") and k not in ("format", ADAPTER_METADATA_KEY)}
    unet_modules = [m for m in source.modules if m.component == "unet"] or source.modules
    rank = Counter(m.rank for m in unet_modules).most_common(1)[0][0]
    alpha = Counter(m.alpha for m in unet_modules).most_common(1)[0][0]
    for key in DERIVED_KEYS:
        carried.pop(key, None)  # re-derived from the weights below; descriptive keys are carried as they are
    if source.family == "flux":
        from lorastudio.models.flux_formats import write_converted

        return write_converted(out, source.modules, to, {**carried, "lorastudio.converted_from": "flux"})
    header = build_metadata(source.family, rank, alpha, source.modules, carried)
    header["lorastudio.converted_from"] = source.format
    if to == "kohya":
        return write_kohya(out, source.modules, source.family, header, layout)
    return write_diffusers(out, source.modules, header)
