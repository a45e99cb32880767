"""Helpers for the evaluation tests (fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from lorastudio.data.manifest import write_dataset_json, write_manifest, write_sidecar

TRIGGER = "ohwx_kfood_style"


def run_cli(args: list[str]):
    """`lorastudio ...` in-process through the real click entry point."""
    from click.testing import CliRunner

    from lorastudio.cli.main import cli

    return CliRunner().invoke(cli, args, catch_exceptions=False)


def sha256(path: Path) -> str:
    """Hex digest of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def pixels(path: Path) -> np.ndarray:
    """An image file as a float array."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32)


def make_random_lora(model_dir: Path, out_dir: Path, *, seed: int, family: str = "sd15") -> dict[str, Path]:
    """Export a random (non-zero B) UNet + text-encoder adapter in both formats."""
    import torch

    from lorastudio.models import lora
    from lorastudio.models.tiny import pipeline_class

    pipe = pipeline_class(family).from_pretrained(model_dir)
    encoders = [te for te in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if te is not None]
    torch.manual_seed(seed)
    lora.attach_lora(pipe.unet, rank=4, alpha=4.0, init_lora_weights=False,
                     target_modules=lora.unet_target_modules(pipe.unet, "attn"))
    for te in encoders:
        lora.attach_lora(te, rank=2, alpha=2.0, init_lora_weights=False,
                         target_modules=lora.text_encoder_target_modules(te, "attn"))
    with torch.no_grad():
        for model in [pipe.unet, *encoders]:
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.mul_(0.2)  # visible, yet far from saturating the image
    return lora.export_adapter(out_dir, family=family, unet=pipe.unet, text_encoders=encoders, rank=4, alpha=4.0)


def _scene(rng: np.random.Generator, background: tuple[int, int, int]) -> Image.Image:
    """A plate on a plain background: enough structure for the pixel detectors."""
    h = w = 64
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:] = background
    yy, xx = np.mgrid[0:h, 0:w]
    plate = (xx - 32) ** 2 + (yy - 32) ** 2 < 18 ** 2
    img[plate] = (240, 238, 232)
    food = (xx - 32) ** 2 + (yy - 32) ** 2 < 10 ** 2
    img[food] = rng.integers(120, 230, size=3)
    img += rng.normal(0, 3, size=img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_dataset(root: Path, count: int = 6) -> Path:
    """A captioned dataset whose images all share a black background nobody captioned."""
    rng = np.random.default_rng(0)
    dishes = ["bibimbap", "tteokbokki", "japchae"]
    (root / "images").mkdir(parents=True)
    records = []
    for i in range(count):
        rid = f"img{i:03d}"
        _scene(rng, (15, 15, 18)).save(root / "images" / f"{rid}.png")
        rec = {"id": rid, "file": f"images/{rid}.png", "source": f"/raw/{rid}.jpg", "sha256": f"{i:064x}",
               "orig_width": 64, "orig_height": 64, "width": 64, "height": 64, "crop": [0, 0, 64, 64],
               "repeats": 1, "flags": [], "caption_text": f"{TRIGGER}, a photo of {dishes[i % 3]}, on a white plate"}
        records.append(rec)
        write_sidecar(root, rec)
    write_manifest(root, records)
    write_dataset_json(root, {"resolution": 64, "buckets": ["64x64"], "trigger": TRIGGER})
    return root
