"""A small port of how ComfyUI applies a LoRA to a FLUX.1 model, for parity tests.

ComfyUI keeps Flux in BFL layout (fused qkv, `linear1` = q|k|v|mlp). Its key map
(`comfy/lora.py:model_lora_keys_unet` + `comfy/utils.py:flux_to_diffusers`) names every BFL
weight as `lora_unet_<path with _>` and `diffusion_model.<path>`, and every diffusers module
as `transformer.<path>` / `lora_transformer_<path with _>` pointing at a row slice of the
fused BFL weight (the final adaLN with its two halves swapped). A patch is
`alpha / rows(down) · up @ down`, scale 1 when the file has no `.alpha`; keys that match
nothing are only warned about ("lora key not loaded"), which the port returns.
Written independently of lorastudio's converter so the two can check each other.
"""

from __future__ import annotations

from typing import Any

import torch

_UP_DOWN = ((".lora_up.weight", ".lora_down.weight"), (".lora_B.weight", ".lora_A.weight"),
            ("_lora.up.weight", "_lora.down.weight"), (".lora.up.weight", ".lora.down.weight"))


def diffusers_to_bfl(n_double: int, n_single: int, hidden: int, mlp: int) -> dict[str, tuple[str, int, int, bool]]:
    """diffusers module path -> (BFL path, row offset, rows, swap halves), as flux_to_diffusers lays it out."""
    out: dict[str, tuple[str, int, int, bool]] = {}
    for i in range(n_double):
        b, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for k, name in enumerate(("to_q", "to_k", "to_v")):
            out[d + f"attn.{name}"] = (b + "img_attn.qkv", k * hidden, hidden, False)
        for k, name in enumerate(("add_q_proj", "add_k_proj", "add_v_proj")):
            out[d + f"attn.{name}"] = (b + "txt_attn.qkv", k * hidden, hidden, False)
        plain = {"attn.to_out.0": ("img_attn.proj", hidden), "attn.to_add_out": ("txt_attn.proj", hidden),
                 "ff.net.0.proj": ("img_mlp.0", mlp), "ff.net.2": ("img_mlp.2", hidden),
                 "ff_context.net.0.proj": ("txt_mlp.0", mlp), "ff_context.net.2": ("txt_mlp.2", hidden),
                 "norm1.linear": ("img_mod.lin", 6 * hidden), "norm1_context.linear": ("txt_mod.lin", 6 * hidden)}
        for name, (bfl, rows) in plain.items():
            out[d + name] = (b + bfl, 0, rows, False)
    for i in range(n_single):
        b, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for k, name in enumerate(("attn.to_q", "attn.to_k", "attn.to_v")):
            out[d + name] = (b + "linear1", k * hidden, hidden, False)
        out[d + "proj_mlp"] = (b + "linear1", 3 * hidden, mlp, False)
        out[d + "proj_out"] = (b + "linear2", 0, hidden, False)
        out[d + "norm.linear"] = (b + "modulation.lin", 0, 3 * hidden, False)
    embedders = {"x_embedder": "img_in", "context_embedder": "txt_in"}
    for diff, bfl in (("timestep_embedder", "time_in"), ("text_embedder", "vector_in"), ("guidance_embedder", "guidance_in")):
        embedders[f"time_text_embed.{diff}.linear_1"] = f"{bfl}.in_layer"
        embedders[f"time_text_embed.{diff}.linear_2"] = f"{bfl}.out_layer"
    for diff, bfl in embedders.items():
        out[diff] = (bfl, 0, -1, False)
    out["proj_out"] = ("final_layer.linear", 0, -1, False)
    out["norm_out.linear"] = ("final_layer.adaLN_modulation.1", 0, 2 * hidden, True)
    return out


def key_map(table: dict[str, tuple[str, int, int, bool]]) -> dict[str, tuple[str, int, int, bool]]:
    """LoRA stem -> target, for every name ComfyUI accepts for Flux."""
    keys: dict[str, tuple[str, int, int, bool]] = {}
    for diff, (bfl, offset, rows, swap) in table.items():
        keys["transformer." + diff] = (bfl, offset, rows, swap)
        keys["lora_transformer_" + diff.replace(".", "_")] = (bfl, offset, rows, swap)
    for bfl in {t[0] for t in table.values()}:
        keys.setdefault("lora_unet_" + bfl.replace(".", "_"), (bfl, 0, -1, False))
        keys.setdefault("diffusion_model." + bfl, (bfl, 0, -1, False))
    return keys


def apply(lora: dict[str, torch.Tensor], table: dict[str, tuple[str, int, int, bool]],
          shapes: dict[str, tuple[int, int]]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """ΔW per BFL weight from a LoRA state dict, and the keys ComfyUI would not load."""
    deltas = {bfl: torch.zeros(shape) for bfl, shape in shapes.items()}
    loaded: set[str] = set()
    for stem, (bfl, offset, rows, swap) in key_map(table).items():
        for up_sfx, down_sfx in _UP_DOWN:
            if stem + up_sfx in lora:
                up, down = lora[stem + up_sfx].float(), lora[stem + down_sfx].float()
                alpha = lora.get(stem + ".alpha")
                scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
                diff = up.flatten(1) @ down.flatten(1)
                if swap:
                    first, second = diff.chunk(2, dim=0)
                    diff = torch.cat([second, first])
                size = diff.shape[0] if rows == -1 else rows
                deltas[bfl][offset:offset + size] += scale * diff
                loaded.update({stem + up_sfx, stem + down_sfx, stem + ".alpha"})
                break
    return deltas, sorted(set(lora) - loaded)


def bfl_shapes(transformer: Any, table: dict[str, tuple[str, int, int, bool]]) -> dict[str, tuple[int, int]]:
    """Shapes of the fused BFL weights of a diffusers Flux transformer."""
    rows: dict[str, int] = {}
    cols: dict[str, int] = {}
    for diff, (bfl, offset, size, _) in table.items():
        try:
            mod = transformer.get_submodule(diff)
        except AttributeError:
            continue
        layer = getattr(mod, "base_layer", mod)
        rows[bfl] = max(rows.get(bfl, 0), offset + layer.out_features)
        cols[bfl] = layer.in_features
    return {bfl: (rows[bfl], cols[bfl]) for bfl in rows}


def truth_in_bfl(deltas: dict[str, torch.Tensor], table: dict[str, tuple[str, int, int, bool]],
                 shapes: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Diffusers-space ΔW placed into the BFL weights the way ComfyUI's slices address them."""
    out = {bfl: torch.zeros(shape) for bfl, shape in shapes.items()}
    for diff, delta in deltas.items():
        bfl, offset, _, swap = table[diff]
        if swap:
            first, second = delta.chunk(2, dim=0)
            delta = torch.cat([second, first])
        out[bfl][offset:offset + delta.shape[0]] += delta
    return out
