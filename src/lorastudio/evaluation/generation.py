"""Text-to-image generation: the one code path used by training samples and by users.

Each request gets its own seeded `torch.Generator`, so an image depends only on its request
and the model, not on what was generated before it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class GenerationRequest:
    """One image to render."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    width: int = 512
    height: int = 512
    steps: int = 20
    cfg: float = 7.0


def generate(pipe: Any, requests: list[GenerationRequest], *, device: str = "cpu",
             pipe_kwargs: dict[str, Any] | None = None) -> list[Image.Image]:
    """Render each request with `pipe` (a diffusers text-to-image pipeline), one at a time.

    `pipe_kwargs` are family-specific call arguments (Flux: the T5 length it trained with)."""
    import torch

    images = []
    for req in requests:
        generator = torch.Generator(device=device).manual_seed(req.seed)
        with torch.no_grad():
            out = pipe(
                prompt=req.prompt,
                negative_prompt=req.negative_prompt or None,
                width=req.width,
                height=req.height,
                num_inference_steps=req.steps,
                guidance_scale=req.cfg,
                generator=generator,
                output_type="pil",
                **(pipe_kwargs or {}),
            )
        images.append(out.images[0])
    return images


def _free_path(path: Path) -> Path:
    if not path.exists():
        return path
    n = 1
    while True:
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not candidate.exists():
            return candidate
        n += 1


def save_png(image: Image.Image, path: Path | str, request: GenerationRequest, extra: dict | None = None) -> Path:
    """Save as PNG with the request (and `extra`) in text chunks; never overwrites (adds -1, -2...)."""
    from PIL.PngImagePlugin import PngInfo

    target = _free_path(Path(path).with_suffix(".png"))
    target.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    params = {**asdict(request), **(extra or {})}
    info.add_text("lorastudio", json.dumps(params, ensure_ascii=False))
    # A1111-style "parameters" text so image browsers that know that format show the prompt.
    info.add_text(
        "parameters",
        f"{request.prompt}\nNegative prompt: {request.negative_prompt}\n"
        f"Steps: {request.steps}, CFG scale: {request.cfg}, Seed: {request.seed}, Size: {request.width}x{request.height}",
    )
    image.save(target, format="PNG", pnginfo=info)
    return target
