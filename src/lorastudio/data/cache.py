"""Latent and text-embedding caches keyed by content hash and model hash.

Entries live in memory during a run; with `cache: disk` each entry is also a small
safetensors file under `<cache_dir>/<kind>/<model hash>/<content hash>.safetensors`, so a
second run with the same model and images reuses them. Files are written atomically and
a file that fails to load is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/lorastudio, else ~/.cache/lorastudio."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lorastudio"


def module_hash(*modules: Any, extra: str = "") -> str:
    """sha256 over the names, dtypes, shapes and bytes of every tensor of the modules."""
    import torch

    digest = hashlib.sha256(extra.encode())
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            # uint8 view: numpy has no bfloat16, and the bytes are what matters.
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def tokenizer_hash(tokenizers: Iterable[Any]) -> str:
    """sha256 of the tokenizers' vocabularies and lengths (they shape the embeddings too)."""
    digest = hashlib.sha256()
    for tok in tokenizers:
        digest.update(json.dumps(sorted(tok.get_vocab().items())).encode())
        digest.update(str(tok.model_max_length).encode())
    return digest.hexdigest()


class TensorCache:
    """A content-addressed store of small tensor dicts, in memory and optionally on disk."""

    def __init__(self, kind: str, model_hash: str, *, root: Path | None) -> None:
        self.entries: dict[str, dict[str, torch.Tensor]] = {}
        self.folder = root / kind / model_hash[:32] if root is not None else None
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        """The entry for `key`, reading it from disk on first use."""
        if key in self.entries:
            return self.entries[key]
        if self.folder is None or not self._path(key).is_file():
            return None
        from safetensors.torch import load_file

        try:
            value = load_file(str(self._path(key)))
        except Exception:  # noqa: BLE001 - a damaged cache file is recomputed, never trusted
            return None
        self.entries[key] = value
        return value

    def put(self, key: str, value: dict[str, torch.Tensor]) -> None:
        """Store an entry (and write it atomically when the cache is on disk)."""
        value = {k: v.detach().cpu().contiguous() for k, v in value.items()}
        self.entries[key] = value
        if self.folder is None:
            return
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
        os.close(fd)
        try:
            save_file(value, tmp)
            os.replace(tmp, self._path(key))
        finally:
            Path(tmp).unlink(missing_ok=True)

    def fill(self, keys: list[str], compute: Callable[[list[str]], list[dict[str, torch.Tensor]]], *, desc: str, show: bool) -> int:
        """Compute the entries that are missing, one key at a time; returns how many."""
        from tqdm import tqdm

        missing = [k for k in dict.fromkeys(keys) if self.get(k) is None]
        self.hits += len(set(keys)) - len(missing)
        self.misses += len(missing)
        for key in tqdm(missing, desc=desc, unit="item", disable=not show or not missing):
            self.put(key, compute([key])[0])
        return len(missing)


def latent_key(image_sha: str, width: int, height: int, flip: bool) -> str:
    """Cache key of one image's latent at one size and orientation."""
    return hashlib.sha256(f"{image_sha}:{width}x{height}:flip={int(flip)}".encode()).hexdigest()


def text_key(caption: str) -> str:
    """Cache key of one caption's embeddings."""
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()


def encode_latents(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """VAE latents scaled for the UNet. Uses the distribution mean so the result is the same
    whether it comes from the cache or is computed fresh in the step."""
    import torch

    with torch.no_grad():
        latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((latents - shift) * vae.config.scaling_factor).float()
