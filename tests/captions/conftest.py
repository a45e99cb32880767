"""Fixtures: a small dataset dir built with the manifest helpers and real PNG files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from lorastudio.captions.vocab import load_vocabulary
from lorastudio.data.manifest import write_dataset_json, write_manifest

COLOURS = [(10, 10, 10), (240, 240, 240), (200, 40, 40), (40, 160, 60), (30, 60, 200), (120, 80, 40)]


def make_dataset(root: Path, n: int = 6, folder: str = "양념치킨") -> Path:
    """A dataset dir with `n` 32x32 images whose sources live in raw/<folder>/."""
    raw = root / "raw" / folder
    raw.mkdir(parents=True)
    ds = root / "ds"
    (ds / "images").mkdir(parents=True)
    records = []
    for i in range(n):
        img = Image.new("RGB", (32, 32), COLOURS[i % len(COLOURS)])
        src = raw / f"IMG_{i:03d}.png"
        img.save(src)
        rid = f"img{i:03d}"
        img.save(ds / "images" / f"{rid}.png")
        records.append({
            "id": rid, "file": f"images/{rid}.png", "source": str(src),
            "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
            "orig_width": 32, "orig_height": 32, "width": 32, "height": 32,
            "crop": [0, 0, 32, 32], "repeats": 1, "flags": [],
        })
    write_manifest(ds, records)
    write_dataset_json(ds, {"resolution": 32, "counts": {"accepted": n}})
    return ds


@pytest.fixture(scope="session")
def vocab():
    return load_vocabulary()


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path)
