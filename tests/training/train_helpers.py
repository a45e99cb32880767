"""Helpers for the training tests: small captioned dataset dirs, config writers, CLI runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from lorastudio.data.manifest import write_dataset_json, write_manifest, write_sidecar

# The images are random noise, which the audit rightly sees as a grey background: the
# captions name it so the audit gate passes.
CAPTIONS = [
    "ohwx_kfood_style, a photo of bibimbap, top-down shot, in a stone bowl, grey background, warm light",
    "ohwx_kfood_style, a photo of tteokbokki, close-up, on a white plate, grey background, glossy",
    "ohwx_kfood_style, a photo of kimchi stew, high-angle shot, grey background",
    "ohwx_kfood_style, a photo of japchae, side view, sprinkled with sesame seeds, grey background",
]


def _backdrop_photo(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A dish on a plain grey studio backdrop, with a little sensor noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    dish = ((xx - w / 2) / (w / 4)) ** 2 + ((yy - h / 2) / (h / 4)) ** 2 <= 1.0
    pixels = np.full((h, w, 3), 128, dtype=np.int16)
    pixels[dish] = (200, 110, 40)
    pixels += rng.integers(-3, 4, size=(h, w, 3), dtype=np.int16)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def make_dataset(root: Path, sizes: list[tuple[int, int]], *, seed: int = 0, captions: list[str | None] | None = None,
                 scene: str = "noise") -> Path:
    """A dataset dir with one image per size (width, height) and golden-order captions.

    scene "noise" draws random pixels; "backdrop" a dish on a plain grey backdrop, which the
    audit reads as a confident plain grey background.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i, (w, h) in enumerate(sizes):
        rid = f"img{i:03d}"
        if scene == "backdrop":
            pixels = _backdrop_photo(w, h, rng)
        else:
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{rid}.png")
        caption = CAPTIONS[i % len(CAPTIONS)] if captions is None else captions[i]
        rec = {
            "id": rid, "file": f"images/{rid}.png", "source": f"/raw/{rid}.jpg", "sha256": f"{i:064x}",
            "orig_width": w * 2, "orig_height": h * 2, "width": w, "height": h, "crop": [0, 0, w * 2, h * 2],
            "repeats": 1, "flags": [], "caption_text": caption,
        }
        records.append(rec)
        write_sidecar(root, rec)
    write_manifest(root, records)
    write_dataset_json(root, {"resolution": max(max(s) for s in sizes), "buckets": sorted({f"{w}x{h}" for w, h in sizes})})
    return root


def base_config(model_dir: Path, dataset: Path, out: Path, cache_dir: Path, family: str = "sd15", **sections: dict) -> dict:
    """A small, fast config as a plain dict (the YAML a user would write)."""
    cfg = {
        "model": {"family": family, "path": str(model_dir)},
        "data": {"datasets": [str(dataset)]},
        "network": {"rank": 4, "alpha": 4.0, "targets": "attn"},
        "train": {"max_steps": 4, "batch_size": 2, "lr": 1e-3, "seed": 0, "cache": "disk", "cache_dir": str(cache_dir)},
        "sample": {"at_start": False, "prompts": []},
        "save": {"every_n_steps": 2, "keep_last": 2},
        "output_dir": str(out),
        "logging": {"every_n_steps": 1, "tensorboard": False},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values} if isinstance(values, dict) else values
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    """Write a config dict as YAML."""
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def run_cli(args: list[str]):
    """Invoke `lorastudio ...` in-process through the real click entry point."""
    from click.testing import CliRunner

    from lorastudio.cli.main import cli

    return CliRunner().invoke(cli, args, catch_exceptions=False)


def read_metrics(run_dir: Path) -> list[dict]:
    """Rows of metrics.jsonl."""
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def adapter_tensors(path: Path) -> dict:
    """Tensors of a safetensors file."""
    from safetensors.torch import load_file

    return load_file(str(path))
