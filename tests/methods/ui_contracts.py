"""The accept rules of A1111 and ComfyUI for embedding files, written down from their source
(reference/ti-dreambooth.md §1.5), so every file we write is checked against them."""

from __future__ import annotations

A1111_EXPECTED_WIDTH = {"sd15": 768, "sd2": 1024, "sdxl": 2048}
COMFY_KEY = {"clip_l": 768, "clip_g": 1280}


class Refused(ValueError):
    """The UI would not load (or would skip) this embedding."""


def a1111_load(tensors: dict, stem: str, family: str, widths: tuple[int, ...]) -> tuple[str, int]:
    """(name, vector width) as A1111's EmbeddingDatabase would register it, else Refused.

    Layouts: `string_to_param` with one entry; `clip_g` + `clip_l` (SDXL, width 1280 + 768);
    any dict with exactly one tensor. The name is the file stem; a width other than the
    family's expected one is skipped. `widths` scales the expected width to the tiny models.
    """
    if "string_to_param" in tensors:
        params = tensors["string_to_param"]
        if len(params) != 1:
            raise Refused("embedding file has multiple terms in it")
        width = next(iter(params.values())).shape[-1]
    elif "clip_g" in tensors and "clip_l" in tensors:
        width = tensors["clip_g"].shape[-1] + tensors["clip_l"].shape[-1]
    elif len(tensors) == 1:
        width = next(iter(tensors.values())).shape[-1]
    else:
        raise Refused(f"embedding file has multiple terms in it ({sorted(tensors)})")
    if width != sum(widths):
        raise Refused(f"skipped: width {width} != expected {sum(widths)} for {family}")
    return stem, width


def comfyui_vector(tensors: dict, embedding_key: str, width: int):
    """The vector ComfyUI's load_embed would use for one tokenizer, else Refused."""
    if "string_to_param" in tensors:
        vector = next(iter(tensors["string_to_param"].values()))
    elif embedding_key in tensors:
        vector = tensors[embedding_key]
    else:
        vector = next(iter(tensors.values()))
    if vector.shape[-1] != width:
        raise Refused(f"shape mismatch when trying to apply embedding, embedding will be ignored {vector.shape[-1]} != {width}")
    return vector
