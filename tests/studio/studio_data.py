"""A large studio dataset written straight to disk (the gallery test and benchmark need 1,000+ images fast)."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

from PIL import Image, ImageDraw

from lorastudio.data.manifest import write_dataset_json, write_manifest, write_sidecar


def synthetic_dataset(data_dir: Path, dataset_id: str, n: int, side: int = 128, seed: int = 0) -> Path:
    """`n` distinct JPEG plates under `<data>/studio/datasets/<id>/dataset`, captioned, with a manifest."""
    rng = random.Random(seed)
    home = Path(data_dir) / "studio" / "datasets" / dataset_id / "dataset"
    (home / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        image = Image.new("RGB", (side, side), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        draw = ImageDraw.Draw(image)
        draw.ellipse([side // 5, side // 5, side * 4 // 5, side * 4 // 5], fill=(rng.randrange(256), 90, 40))
        draw.text((4, 4), str(i), fill=(255, 255, 255))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        data = buffer.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        image_id = digest[:16]
        (home / "images" / f"{image_id}.jpg").write_bytes(data)
        caption = {"trigger": "ohwx_kfood_style", "subject": f"a photo of dish {i}", "shot": [],
                   "objective": ["on a plate"], "style": [], "unplaced": []}
        record = {"id": image_id, "file": f"images/{image_id}.jpg", "source": f"plate_{i:05d}.jpg", "sha256": digest,
                  "orig_width": side, "orig_height": side, "width": side, "height": side, "crop": [0, 0, side, side],
                  "repeats": 1, "role": "train", "flags": ["blurry"] if i % 7 == 0 else [], "caption": caption,
                  "caption_text": f"ohwx_kfood_style, a photo of dish {i}, on a plate"}
        records.append(record)
        write_sidecar(home, record)
    write_manifest(home, records)
    write_dataset_json(home, {"trigger": "ohwx_kfood_style", "count": n, "resolution": side})
    return home.parent
