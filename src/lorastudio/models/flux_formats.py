"""FLUX.1 LoRA files: one internal form, honest writers, a reader for every common layout.

Inside, a Flux LoRA is a list of `LoraModule(component, diffusers path, down, up, alpha)`
(component "unet" is the transformer). Writers:
- diffusers/PEFT: `transformer.<path>.lora_A/B.weight`, the LoraConfig with *float* alpha in
  the `lora_adapter_metadata` header (diffusers reads it; it refuses `.alpha` tensors next to it).
- kohya / BFL fused: `lora_unet_double_blocks_0_img_attn_qkv.lora_down/up/alpha` etc. Split
  q/k/v(/mlp) LoRAs become one fused module: concatenated downs, block-diagonal up and
  alpha' = (alpha/r)·r' so the scale is unchanged (sd-scripts#2204 kept alpha and was 3-4x weak).
  CLIP is `lora_te1_`, T5 `lora_te3_`; `ss_*` and `modelspec.architecture` in the header.
  ComfyUI, Forge and diffusers' kohya converter load it.
- alpha-baked PEFT: B·(alpha/r), no alpha anywhere, for readers that assume alpha = rank.

The reader takes diffusers/PEFT (also ai-toolkit and SimpleTuner, with or without `.alpha`
or `base_model.model.`), kohya/BFL fused (also `diffusion_model.` + lora_down), BFL-named PEFT
(`diffusion_model.double_blocks…lora_A`, which diffusers silently ignores), OneTrainer
`lora_transformer_` and XLabs `processor.qkv_lora1`. Fused modules are split by looking for a
truly block-diagonal up (never by divisibility of the rank, mflux#458). Every key must map to
a module or the read fails naming it; the result carries a coverage report.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lorastudio.models.lora import ADAPTER_METADATA_KEY, DIFFUSERS_WEIGHT_NAME, LoraModule, _save_safetensors, collect_lora_modules

KOHYA_NAME = "lora.safetensors"
BAKED_NAME = "lora_peft_alpha_baked.safetensors"
MLP_RATIO = 4  # Flux single blocks: proj_mlp is 4x the hidden width

# diffusers path inside a double block -> BFL path inside double_blocks.i
DOUBLE_PLAIN = {"attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj", "ff.net.0.proj": "img_mlp.0",
                "ff.net.2": "img_mlp.2", "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
                "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin"}
DOUBLE_FUSED = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
SINGLE_PLAIN = {"proj_out": "linear2", "norm.linear": "modulation.lin"}
SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
TOP_PLAIN = {"x_embedder": "img_in", "context_embedder": "txt_in",
             "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
             "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
             "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
             "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
             "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
             "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
             "proj_out": "final_layer.linear", "norm_out.linear": "final_layer.adaLN_modulation.1"}
SWAPPED = {"norm_out.linear"}  # AdaLayerNormContinuous is (scale, shift); BFL's final adaLN is (shift, scale)

_CLIP_RE = re.compile(r"text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])")
_T5_RE = re.compile(r"encoder\.block\.\d+\.layer\.\d+\.(SelfAttention\.(q|k|v|o)|DenseReluDense\.(wi_0|wi_1|wo))")
_DOUBLE_RELS = set(DOUBLE_PLAIN) | {p for parts in DOUBLE_FUSED.values() for p in parts}
_SINGLE_RELS = set(SINGLE_PLAIN) | set(SINGLE_FUSED["linear1"])


class FluxLoraError(ValueError):
    """A Flux LoRA file with keys that map to no module (nothing is loaded silently)."""


def is_transformer_path(path: str) -> bool:
    """True for a diffusers FluxTransformer2DModel Linear path a LoRA can adapt."""
    m = re.fullmatch(r"(single_transformer_blocks|transformer_blocks)\.\d+\.(.+)", path)
    if m:
        return m[2] in (_SINGLE_RELS if m[1].startswith("single") else _DOUBLE_RELS)
    return path in TOP_PLAIN


# ---------------------------------------------------------------------------- diffusers -> BFL


def _bfl_target(path: str) -> tuple[str, int | None, tuple[str, ...] | None]:
    """(BFL path, part index in the fused module or None, fused parts or None) of a diffusers path."""
    m = re.fullmatch(r"(single_transformer_blocks|transformer_blocks)\.(\d+)\.(.+)", path)
    if not m:
        return TOP_PLAIN[path], None, None
    single, i, rel = m[1].startswith("single"), m[2], m[3]
    plain, fused, prefix = (SINGLE_PLAIN, SINGLE_FUSED, f"single_blocks.{i}.") if single else (DOUBLE_PLAIN, DOUBLE_FUSED, f"double_blocks.{i}.")
    if rel in plain:
        return prefix + plain[rel], None, None
    for name, parts in fused.items():
        if rel in parts:
            return prefix + name, parts.index(rel), parts
    raise FluxLoraError(f"{path}: not a Flux transformer module a LoRA can adapt")


def _swap_halves(up: Any) -> Any:
    import torch

    half = up.shape[0] // 2
    return torch.cat([up[half:], up[:half]])


def _part_sizes(parts: tuple[str, ...], group: dict[int, LoraModule]) -> list[int]:
    if len(parts) == 3:
        width = next(iter(group.values())).up.shape[0]
        return [width] * 3
    qkv = [m for i, m in group.items() if i < 3]
    hidden = qkv[0].up.shape[0] if qkv else group[3].up.shape[0] // MLP_RATIO
    return [hidden] * 3 + [hidden * MLP_RATIO]


def _fuse(parts: tuple[str, ...], group: dict[int, LoraModule]) -> tuple[Any, Any, float]:
    """Concatenated down, block-diagonal up and alpha' keeping every part's scale."""
    import torch

    sizes = _part_sizes(parts, group)
    present = [group[i] for i in sorted(group)]
    scales = {m.alpha / m.rank for m in present}
    uniform = len(scales) == 1
    rank = sum(m.rank for m in present)
    down = torch.cat([m.down.float() for m in present])
    up = torch.zeros(sum(sizes), rank)
    col = 0
    for i in sorted(group):
        m, row = group[i], sum(sizes[:i])
        factor = 1.0 if uniform else m.alpha / m.rank  # mixed scales: bake each, then alpha' = r'
        up[row:row + sizes[i], col:col + m.rank] = m.up.float() * factor
        col += m.rank
    alpha = next(iter(scales)) * rank if uniform else float(rank)
    return down.to(present[0].down.dtype), up.to(present[0].up.dtype), alpha


def to_bfl_modules(modules: Sequence[LoraModule]) -> list[tuple[str, str, Any, Any, float]]:
    """`(component, BFL or text path, down, up, alpha)`, fusing split q/k/v(/mlp) transformer modules."""
    out: list[tuple[str, str, Any, Any, float]] = []
    groups: dict[str, tuple[tuple[str, ...], dict[int, LoraModule]]] = {}
    for m in modules:
        if m.component != "unet":
            out.append((m.component, m.path, m.down, m.up, m.alpha))
            continue
        target, index, parts = _bfl_target(m.path)
        if index is None:
            up = _swap_halves(m.up) if m.path in SWAPPED else m.up
            out.append(("unet", target, m.down, up, m.alpha))
        else:
            groups.setdefault(target, (parts, {}))[1][index] = m
    for target, (parts, group) in groups.items():
        out.append(("unet", target, *_fuse(parts, group)))
    return out


# ---------------------------------------------------------------------------- BFL -> diffusers


def _split_columns(up_rows: list[Any]) -> list[Any] | None:
    """Column index sets per row segment when the up is block-diagonal, else None (dense)."""
    import torch

    used = [torch.nonzero(seg.abs().sum(0)).flatten() for seg in up_rows]
    if sum(len(u) for u in used) == 0:
        return None
    seen: set[int] = set()
    for cols in used:
        if seen & set(cols.tolist()):
            return None
        seen |= set(cols.tolist())
    return used


def bfl_targets(path: str) -> tuple[str, tuple[str, ...]]:
    """(diffusers block prefix, diffusers paths inside it) one BFL-named module feeds; >1 path = fused."""
    m = re.fullmatch(r"(double_blocks|single_blocks)\.(\d+)\.(.+)", path)
    if not m:
        top = {bfl: diff for diff, bfl in TOP_PLAIN.items()}
        if path not in top:
            raise FluxLoraError(f"{path}: not a FLUX.1 module name")
        return "", (top[path],)
    single, i, rel = m[1] == "single_blocks", m[2], m[3]
    plain, fused = (SINGLE_PLAIN, SINGLE_FUSED) if single else (DOUBLE_PLAIN, DOUBLE_FUSED)
    block = f"{'single_transformer_blocks' if single else 'transformer_blocks'}.{i}."
    reverse = {bfl: diff for diff, bfl in plain.items()}
    if rel in reverse:
        return block, (reverse[rel],)
    if rel not in fused:
        raise FluxLoraError(f"{path}: not a FLUX.1 module name")
    return block, fused[rel]


def from_bfl(path: str, down: Any, up: Any, alpha: float) -> list[LoraModule]:
    """Split one BFL-named transformer LoRA into diffusers modules with the same per-slice ΔW."""
    block, parts = bfl_targets(path)
    if len(parts) == 1:
        up = _swap_halves(up) if parts[0] in SWAPPED and not block else up
        return [LoraModule("unet", block + parts[0], down, up, alpha)]
    unit = up.shape[0] // (3 if len(parts) == 3 else 3 + MLP_RATIO)
    sizes = [unit] * 3 if len(parts) == 3 else [unit] * 3 + [unit * MLP_RATIO]
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    segments = [up[s:s + n] for s, n in zip(starts, sizes)]
    columns = _split_columns(segments)
    rank = down.shape[0]
    out = []
    for name, seg, k in zip(parts, segments, range(len(parts))):
        if columns is None:  # dense: the shared down is copied, each part keeps the same scale
            out.append(LoraModule("unet", block + name, down, seg.contiguous(), alpha))
        elif len(columns[k]):
            cols = columns[k]
            out.append(LoraModule("unet", block + name, down[cols].contiguous(), seg[:, cols].contiguous(),
                                  alpha * len(cols) / rank))
    return out


# ---------------------------------------------------------------------------- writers


def _component_prefix(component: str) -> str:
    return {"unet": "transformer", "text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2"}[component]


def peft_state_dict(modules: Sequence[LoraModule], *, bake_alpha: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """PEFT tensors and the diffusers LoraConfig per component (float alpha); baked: scale folded into B."""
    state: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        group = [m for m in modules if m.component == component]
        if not group:
            continue
        prefix = _component_prefix(component)
        rank = Counter(m.rank for m in group).most_common(1)[0][0]
        alpha = float(Counter(m.alpha for m in group).most_common(1)[0][0])
        names = {m.path: m.path.removeprefix("text_model.") for m in group}
        config.update({
            f"{prefix}.r": rank, f"{prefix}.lora_alpha": alpha, f"{prefix}.target_modules": sorted(names.values()),
            f"{prefix}.rank_pattern": {names[m.path]: m.rank for m in group if m.rank != rank},
            f"{prefix}.alpha_pattern": {names[m.path]: float(m.alpha) for m in group if m.alpha != alpha},
        })
        for m in group:
            up = m.up.float() * (m.alpha / m.rank) if bake_alpha else m.up
            state[f"{prefix}.{m.path}.lora_A.weight"] = m.down.contiguous()
            state[f"{prefix}.{m.path}.lora_B.weight"] = up.to(m.up.dtype).contiguous()
    return state, config


def kohya_state_dict(modules: Sequence[LoraModule]) -> dict[str, Any]:
    """`lora_unet_<BFL path>` / `lora_te1_` / `lora_te3_` tensors with one alpha per stored module."""
    import torch

    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te3_"}
    state: dict[str, Any] = {}
    for component, path, down, up, alpha in to_bfl_modules(modules):
        stem = prefixes[component] + path.replace(".", "_")
        state[stem + ".lora_down.weight"] = down.contiguous()
        state[stem + ".lora_up.weight"] = up.contiguous()
        state[stem + ".alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return state


def flux_metadata(variant: str, rank: int, alpha: float, modules: Sequence[LoraModule], extra: dict[str, str]) -> dict[str, str]:
    """`ss_*` network keys and `modelspec.*` for a FLUX.1 LoRA (plus the caller's training keys)."""
    import datetime as dt

    te = [m for m in modules if m.component != "unet"]
    header = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"flux-1-{variant}/lora",
        "modelspec.implementation": "https://github.com/black-forest-labs/flux",
        "modelspec.title": "lorastudio LoRA",
        "modelspec.date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "ss_network_module": "networks.lora_flux",
        "ss_network_dim": str(int(rank)),
        "ss_network_alpha": str(float(alpha)),
        "ss_base_model_version": "flux1",
        **({"ss_network_args": json.dumps({"text_encoder_dim": te[0].rank, "text_encoder_alpha": te[0].alpha})} if te else {}),
    }
    return {**header, **extra}


def write_flux_files(out_dir: Path, modules: list[LoraModule], *, formats: Sequence[str],
                     metadata: dict[str, str]) -> dict[str, Path]:
    """Write the requested formats (diffusers also writes the alpha-baked PEFT file)."""
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    if "kohya" in formats:
        written["kohya"] = _save_safetensors(kohya_state_dict(modules), out_dir / KOHYA_NAME, metadata)
    if "diffusers" in formats:
        if any(m.component == "text_encoder_2" for m in modules):
            warnings.warn("the T5 (text_encoder_2) LoRA is written to the diffusers file, but diffusers' FluxPipeline "
                          "loads only transformer and text_encoder; use the kohya file (lora_te3_) for T5", stacklevel=2)
        tensors, config = peft_state_dict(modules, bake_alpha=False)
        header = {**metadata, "format": "pt", ADAPTER_METADATA_KEY: json.dumps(config, sort_keys=True)}
        written["diffusers"] = _save_safetensors(tensors, out_dir / "diffusers" / DIFFUSERS_WEIGHT_NAME, header)
        baked, _ = peft_state_dict(modules, bake_alpha=True)
        written["baked"] = _save_safetensors(baked, out_dir / BAKED_NAME, {**metadata, "format": "pt",
                                                                          "lorastudio.alpha_baked": "True"})
    return written


def export_flux_adapter(out_dir: Path, *, variant: str, transformer: Any, text_encoders: list[Any], rank: int,
                        alpha: float, formats: Sequence[str], metadata: dict[str, str] | None = None,
                        adapter_name: str = "default") -> dict[str, Path]:
    """Collect the adapter attached to a Flux transformer (+ CLIP / T5) and write it."""
    modules = collect_lora_modules(transformer, "unet", adapter_name)
    for te, component in zip(text_encoders, ("text_encoder", "text_encoder_2")):
        if te is None:
            continue
        found = collect_lora_modules(te, component, adapter_name)
        if component == "text_encoder_2":  # T5 has no text_model. level
            found = [LoraModule(m.component, m.path.removeprefix("text_model."), m.down, m.up, m.alpha) for m in found]
        modules += found
    if not modules:
        raise ValueError(f"no LoRA adapter '{adapter_name}' is attached to the Flux transformer")
    header = flux_metadata(variant, rank, alpha, modules, metadata or {})
    return write_flux_files(out_dir, modules, formats=formats, metadata=header)


# ---------------------------------------------------------------------------- reader


@dataclass
class ImportReport:
    """What a Flux LoRA file held and what it became."""

    layout: str
    keys: int
    stored_modules: int
    modules: int
    by_component: dict[str, int] = field(default_factory=dict)
    width: int | None = None  # hidden width of the transformer's q projections (header_report)

    def line(self) -> str:
        """One line for the terminal."""
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.by_component.items()))
        return (f"{self.layout}: {self.keys} keys, {self.stored_modules} stored modules -> {self.modules} diffusers "
                f"modules ({parts}); every key mapped")


def _alpha_of(tensors: dict[str, Any], stem: str, config: dict[str, Any], prefix: str, rel: str, rank: int,
              used: set[str]) -> float:
    if stem + ".alpha" in tensors:
        used.add(stem + ".alpha")
        return float(tensors[stem + ".alpha"].float().item())
    if f"{prefix}.lora_alpha" in config:
        pattern = (config.get(f"{prefix}.alpha_pattern") or {}).get(rel)
        return float(pattern if pattern is not None else config[f"{prefix}.lora_alpha"])
    return float(rank)


_PAIRS = ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"),
          (".down.weight", ".up.weight"))


def _stems(tensors: dict[str, Any]) -> list[tuple[str, str, str]]:
    found = []
    for key in sorted(tensors):
        for down_sfx, up_sfx in _PAIRS:
            if key.endswith(down_sfx):
                stem = key[: -len(down_sfx)]
                if stem + up_sfx not in tensors:
                    raise FluxLoraError(f"{key}: matching {stem + up_sfx} is missing")
                found.append((stem, down_sfx, up_sfx))
                break
    return found


_KOHYA_DOUBLE = re.compile(r"double_blocks_(\d+)_(img|txt)_(attn_qkv|attn_proj|mlp_0|mlp_2|mod_lin)")
_KOHYA_SINGLE = re.compile(r"single_blocks_(\d+)_(linear1|linear2|modulation_lin)")
_XLABS = re.compile(r"double_blocks\.(\d+)\.processor\.(qkv|proj)_lora([12])")


def _bfl_from_kohya(body: str) -> str | None:
    if m := _KOHYA_DOUBLE.fullmatch(body):
        head, _, tail = m[3].partition("_")
        return f"double_blocks.{m[1]}.{m[2]}_{head}.{tail}"
    if m := _KOHYA_SINGLE.fullmatch(body):
        return f"single_blocks.{m[1]}.{m[2].replace('modulation_lin', 'modulation.lin')}"
    top = {bfl.replace(".", "_"): bfl for bfl in TOP_PLAIN.values()}
    return top.get(body)


def _diffusers_from_underscored(body: str) -> str | None:
    m = re.fullmatch(r"(single_transformer_blocks|transformer_blocks)_(\d+)_(.+)", body)
    if m:
        rels = _SINGLE_RELS if m[1].startswith("single") else _DOUBLE_RELS
        rel = {r.replace(".", "_"): r for r in rels}.get(m[3])
        return f"{m[1]}.{m[2]}.{rel}" if rel else None
    return {p.replace(".", "_"): p for p in TOP_PLAIN}.get(body)


def _text_path(component: str, body: str) -> str | None:
    if component == "text_encoder":
        from lorastudio.models.kohya_keys import from_stem

        path = from_stem("lora_te1_" + body)[1]
        return path if _CLIP_RE.fullmatch(path) else None
    m = re.fullmatch(r"encoder_block_(\d+)_layer_(\d+)_(SelfAttention|DenseReluDense)_(q|k|v|o|wi_0|wi_1|wo)", body)
    return f"encoder.block.{m[1]}.layer.{m[2]}.{m[3]}.{m[4]}" if m else None


def _classify(stem: str) -> tuple[str, str, str] | None:
    """(layout, component, name kind + name) of a stem: kinds bfl / diffusers / text."""
    stem = stem.replace(".base_model.model.", ".")
    for prefix, layout in (("lora_unet_", "kohya"), ("lora_transformer_", "onetrainer")):
        if stem.startswith(prefix):
            body = stem[len(prefix):]
            bfl = _bfl_from_kohya(body) if layout == "kohya" else None
            diff = _diffusers_from_underscored(body) if bfl is None else None
            return (layout, "unet", f"bfl:{bfl}") if bfl else (layout, "unet", f"diffusers:{diff}") if diff else None
    for prefix, component in (("lora_te1_", "text_encoder"), ("lora_te_", "text_encoder"), ("lora_te3_", "text_encoder_2"),
                              ("lora_te2_", "text_encoder_2")):
        if stem.startswith(prefix):
            path = _text_path(component, stem[len(prefix):])
            return ("kohya", component, f"text:{path}") if path else None
    if stem.startswith("diffusion_model."):
        return "bfl-peft", "unet", f"bfl:{stem[len('diffusion_model.'):]}"
    if m := _XLABS.fullmatch(stem):
        side = "img" if m[3] == "1" else "txt"
        return "xlabs", "unet", f"bfl:double_blocks.{m[1]}.{side}_attn.{m[2]}"
    if stem.startswith("transformer."):
        path = stem[len("transformer."):]
        return ("diffusers", "unet", f"diffusers:{path}") if is_transformer_path(path) else None
    for prefix, component, pattern in (("text_encoder.", "text_encoder", _CLIP_RE), ("text_encoder_2.", "text_encoder_2", _T5_RE)):
        if stem.startswith(prefix):
            path = stem[len(prefix):]
            if component == "text_encoder" and not path.startswith("text_model."):
                path = "text_model." + path
            return ("diffusers", component, f"text:{path}") if pattern.fullmatch(path) else None
    return None


def parse_flux_lora(tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> tuple[list[LoraModule], ImportReport]:
    """Every module of a Flux LoRA state dict in diffusers naming, or FluxLoraError naming unmapped keys."""
    metadata = metadata or {}
    config = json.loads(metadata[ADAPTER_METADATA_KEY]) if ADAPTER_METADATA_KEY in metadata else {}
    used: set[str] = set()
    modules: list[LoraModule] = []
    layouts: Counter[str] = Counter()
    unmapped: list[str] = []
    stems = _stems(tensors)
    for stem, down_sfx, up_sfx in stems:
        kind = _classify(stem)
        if kind is None:
            unmapped.append(stem + down_sfx)
            continue
        layout, component, name = kind
        down, up = tensors[stem + down_sfx], tensors[stem + up_sfx]
        used.update({stem + down_sfx, stem + up_sfx})
        naming, _, path = name.partition(":")
        prefix = _component_prefix(component)
        rel = path.removeprefix("text_model.")
        alpha = _alpha_of(tensors, stem, config, prefix, rel, int(down.shape[0]), used)
        layouts[layout] += 1
        try:
            modules += from_bfl(path, down, up, alpha) if naming == "bfl" else [LoraModule(component, path, down, up, alpha)]
        except FluxLoraError:
            unmapped.append(stem + down_sfx)
    leftover = sorted(set(tensors) - used)
    unmapped += [k for k in leftover if k not in unmapped]
    if unmapped:
        raise FluxLoraError(f"{len(unmapped)} key(s) map to no FLUX.1 module (nothing loaded): {', '.join(unmapped[:4])}")
    if not modules:
        raise FluxLoraError("the file holds no LoRA modules")
    report = ImportReport(layouts.most_common(1)[0][0], len(tensors), len(stems), len(modules),
                          dict(Counter(_component_prefix(m.component) for m in modules)))
    return modules, report


def read_flux_file(path: Path | str) -> tuple[list[LoraModule], ImportReport, dict[str, str]]:
    """Read a `.safetensors` Flux LoRA (any layout above); returns modules, report and header."""
    from safetensors import safe_open

    from lorastudio.models.weights_file import read_header

    path = Path(path)
    read_header(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    modules, report = parse_flux_lora(tensors, metadata)
    return modules, report, metadata


_HIDDEN_INPUTS = ("attn.to_q", "attn.add_q_proj")  # take the transformer's hidden width as input


def header_report(shapes: dict[str, Sequence[int]], metadata: dict[str, str] | None = None) -> ImportReport:
    """The reader's key mapping over a file header alone (no tensor is read, no torch).

    Same layouts and the same FluxLoraError on unmapped keys as `parse_flux_lora`; a fused
    module counts as all its parts (a block-diagonal up with an empty slice loads one fewer).
    `width` is the hidden width the q projections expect, to compare with the served model.
    """
    used: set[str] = set()
    unmapped: list[str] = []
    layouts: Counter[str] = Counter()
    components: Counter[str] = Counter()
    width = None
    stems = _stems(shapes)
    for stem, down_sfx, up_sfx in stems:
        kind = _classify(stem)
        naming, _, path = kind[2].partition(":") if kind else ("", "", "")
        try:
            parts = bfl_targets(path)[1] if naming == "bfl" else (path,) if kind else ()
        except FluxLoraError:
            parts = ()
        if not parts:
            unmapped.append(stem + down_sfx)
            continue
        layout, component, _ = kind
        used.update({stem + down_sfx, stem + up_sfx, stem + ".alpha"})
        layouts[layout] += 1
        components[_component_prefix(component)] += len(parts)
        if component == "unet" and any(p.endswith(_HIDDEN_INPUTS) for p in parts):
            width = width or int(shapes[stem + down_sfx][1])
    unmapped += sorted(set(shapes) - used - set(unmapped))
    if unmapped:
        raise FluxLoraError(f"{len(unmapped)} key(s) map to no FLUX.1 module (nothing loaded): {', '.join(unmapped[:4])}")
    if not stems:
        raise FluxLoraError("the file holds no LoRA modules")
    return ImportReport(layouts.most_common(1)[0][0], len(shapes), len(stems), sum(components.values()),
                        dict(components), width)


def looks_like_flux(keys: Sequence[str]) -> bool:
    """True when key names say the LoRA is for a Flux transformer."""
    markers = ("transformer.single_transformer_blocks.", "transformer.transformer_blocks.", "lora_unet_double_blocks_",
               "lora_unet_single_blocks_", "diffusion_model.double_blocks.", "diffusion_model.single_blocks.",
               "lora_transformer_single_transformer_blocks_", "lora_transformer_transformer_blocks_", "lora_te3_")
    return any(k.startswith(markers) or ".processor.qkv_lora" in k for k in keys)


# ---------------------------------------------------------------------------- loading into a pipeline


def check_flux_fit(modules: Sequence[LoraModule], components: dict[str, Any], source: Any) -> None:
    """FluxLoraError in one line when modules do not match the pipeline's layer shapes."""
    from lorastudio.models.lora_formats import _find_module

    bad = []
    for m in modules:
        model = components.get(m.component)
        layer = _find_module(model, m.path) if model is not None else None
        layer = getattr(layer, "base_layer", layer)
        if layer is None or (layer.in_features, layer.out_features) != (int(m.down.shape[1]), int(m.up.shape[0])):
            bad.append(m.path)
    if bad:
        raise FluxLoraError(f"{source}: {len(bad)} of {len(modules)} modules do not fit this FLUX.1 model "
                            f"(first: {bad[0]}); is it a LoRA for another base or size?")


def loadable_flux_file(pipe: Any, path: Path | str, out: Path) -> Path:
    """Read any Flux LoRA layout, check it against `pipe`, write the alpha-baked PEFT file diffusers loads."""
    modules, _, _ = read_flux_file(path)
    t5 = [m for m in modules if m.component == "text_encoder_2"]
    if t5:
        warnings.warn(f"{path}: {len(t5)} T5 LoRA modules are not applied (diffusers' FluxPipeline loads LoRA on the "
                      "transformer and CLIP only)", stacklevel=2)
        modules = [m for m in modules if m.component != "text_encoder_2"]
    check_flux_fit(modules, {"unet": pipe.transformer, "text_encoder": pipe.text_encoder}, path)
    tensors, _ = peft_state_dict(modules, bake_alpha=True)
    return _save_safetensors(tensors, Path(out), {"format": "pt", "lorastudio.converted_from": str(path)})


def write_converted(out: Path, modules: list[LoraModule], to: str, metadata: dict[str, str]) -> Path:
    """`lorastudio export` for Flux: kohya/BFL fused or diffusers/PEFT with float alpha in the header."""
    arch = metadata.get("modelspec.architecture", "")
    variant = metadata.get("lorastudio.flux_variant") or ("schnell" if "schnell" in arch else "dev")
    unet = [m for m in modules if m.component == "unet"] or modules
    rank = Counter(m.rank for m in unet).most_common(1)[0][0]
    alpha = float(Counter(m.alpha for m in unet).most_common(1)[0][0])
    carried = {k: v for k, v in metadata.items() if not k.startswith("ss_network_")}
    header = flux_metadata(variant, rank, alpha, modules, carried)
    if to == "kohya":
        return _save_safetensors(kohya_state_dict(modules), Path(out), header)
    tensors, config = peft_state_dict(modules, bake_alpha=False)
    return _save_safetensors(tensors, Path(out), {**header, "format": "pt", ADAPTER_METADATA_KEY: json.dumps(config, sort_keys=True)})
