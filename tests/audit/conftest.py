"""Fixtures for the audit tests: the shipped vocabulary and tiny caption-only datasets."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lorastudio.captions.vocab import load_vocabulary
from lorastudio.data.manifest import write_dataset_json, write_manifest, write_sidecar

TRIGGER = "ohwx_kfood_style"

# The scene generator is registered under a unique module name: a plain `import scenes`
# could pick up another test folder's module of the same name.
_spec = importlib.util.spec_from_file_location("audit_scenes", Path(__file__).with_name("scenes.py"))
audit_scenes = importlib.util.module_from_spec(_spec)
sys.modules["audit_scenes"] = audit_scenes
_spec.loader.exec_module(audit_scenes)


@pytest.fixture(scope="session")
def vocab():
    """The shipped food.korean vocabulary (with core.photo and food)."""
    return load_vocabulary(("food.korean",))


def write_text_dataset(root: Path, captions: list[str], *, trigger: str | None = TRIGGER, seed: int = 0) -> Path:
    """A dataset dir with one small mid-grey textured image per caption (no planted look)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i, text in enumerate(captions):
        rid = f"img{i:03d}"
        pixels = np.clip(rng.normal(0.5, 0.15, size=(32, 32, 3)), 0, 1)
        Image.fromarray((pixels * 255).astype(np.uint8)).save(root / "images" / f"{rid}.png")
        rec = {"id": rid, "file": f"images/{rid}.png", "source": f"raw/{rid}.png", "sha256": f"{i:064x}",
               "orig_width": 32, "orig_height": 32, "width": 32, "height": 32, "crop": [0, 0, 32, 32],
               "caption_text": text or None}
        records.append(rec)
        write_sidecar(root, rec)
    write_manifest(root, records)
    write_dataset_json(root, {"trigger": trigger} if trigger else {})
    return root


@pytest.fixture
def text_dataset(tmp_path):
    """Factory: `text_dataset(captions, trigger=...)` -> dataset dir."""
    def make(captions: list[str], **kwargs) -> Path:
        return write_text_dataset(tmp_path / "ds", captions, **kwargs)
    return make
