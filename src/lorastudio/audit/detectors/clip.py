"""CLIP / SigLIP zero-shot evidence, with image embeddings cached per image and model.

The probe itself (`lorastudio.captions.backends.clip_probe`) embeds images and scores them
against the vocabulary's prompts. Embedding is the slow part, so embeddings are cached in
`<dataset>/.cache/audit/<model key>.safetensors`, keyed by the sha256 of the processed
image file: a re-run only encodes images that are new or changed, and adding attributes to
a pack costs only the (cheap) text prompts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lorastudio.audit.detectors import Evidence
from lorastudio.data.hashing import file_sha256

CACHE_DIR = Path(".cache") / "audit"
# A softmax over a dozen options puts many true attributes under 0.05; only a near-zero
# zero-shot probability is treated as proof that a captioned attribute is absent.
CLIP_ABSENT = 0.01
# A zero-shot probability is a softmax within the attribute's group, not a calibrated one:
# an option that beats all the others together is as confident as the probe gets.
CLIP_PRESENT = 0.5


def cache_path(dataset_dir: Path, model: str) -> Path:
    """Where the embeddings for `model` live inside the dataset dir."""
    key = hashlib.sha256(str(model).encode("utf-8")).hexdigest()[:16]
    return Path(dataset_dir) / CACHE_DIR / f"clip-{key}.safetensors"


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))


def _write_cache(path: Path, cache: dict[str, np.ndarray], model: str) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in cache.items()}, str(tmp), metadata={"model": str(model)})
    tmp.replace(path)


def embed_cached(probe, dataset_dir: Path, paths: Sequence[Path], model: str, *,
                 batch_size: int = 16, progress: bool = False) -> tuple[np.ndarray, int]:
    """Embeddings for `paths` (rows in order) and how many had to be encoded now."""
    from tqdm import tqdm

    from lorastudio.audit.detectors.pixel import MAX_FILE_BYTES
    from lorastudio.data.images import DecodeLimits, decode_image

    store = cache_path(dataset_dir, model)
    cache = _read_cache(store)
    keys = [file_sha256(p) for p in paths]
    todo = [i for i, k in enumerate(keys) if k not in cache]
    for start in tqdm(range(0, len(todo), batch_size), desc="clip embeddings", disable=not progress):
        batch = todo[start : start + batch_size]
        images = []
        for i in batch:
            if paths[i].stat().st_size > MAX_FILE_BYTES:
                raise ValueError(f"{paths[i]}: over the {MAX_FILE_BYTES} byte limit")
            images.append(decode_image(paths[i].read_bytes(), DecodeLimits()).image)
        for i, emb in zip(batch, np.asarray(probe.embed_images(images), dtype=np.float32)):
            cache[keys[i]] = emb
    if todo:
        _write_cache(store, cache, model)
    return np.stack([cache[k] for k in keys]) if keys else np.zeros((0, 0), np.float32), len(todo)


def detect(dataset_dir: Path, paths: Sequence[Path], image_ids: Sequence[str], vocab, model: str, *,
           device: str = "cpu", progress: bool = False) -> Evidence:
    """Zero-shot probabilities for every vocabulary attribute from a CLIP/SigLIP model."""
    from lorastudio.captions.backends import get_backend

    probe = get_backend("clip-probe", model=model, device=device, vocab=vocab)
    embeddings, encoded = embed_cached(probe, dataset_dir, paths, model, progress=progress)
    scores = probe.score(embeddings, vocab)
    probs = {attr_id: np.asarray(p, dtype=np.float32) for attr_id, p in scores.items()}
    notes = [f"clip: encoded {encoded} image(s), {len(paths) - encoded} from the cache"]
    return Evidence(f"clip:{model}", list(image_ids), probs, notes=notes, absent_below=CLIP_ABSENT,
                    present_at=CLIP_PRESENT)
