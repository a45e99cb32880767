"""Latents and text conditioning for a batch, from the caches or from live encoders.

Once every latent (and, when captions are fixed and the text encoder frozen, every caption
embedding) is cached, the VAE and text encoders are released; sampling loads them again
for the few seconds it needs them.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lorastudio.data.cache import TensorCache, encode_latents, latent_key, module_hash, text_key, tokenizer_hash
from lorastudio.data.dataset import Example, Item, collate_pixels
from lorastudio.data.hashing import file_sha256
from lorastudio.models.families import Family, ModelParts, load_text_parts, load_vae

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import torch

    from lorastudio.config.train import TrainConfig


@dataclass
class Features:
    """Turns examples into (latents, conditioning) for one family and one config."""

    family: Family
    cfg: TrainConfig
    parts: ModelParts
    log: Callable[[str], None]
    latent_cache: TensorCache | None = None
    text_cache: TensorCache | None = None
    image_sha: dict[str, str] = field(default_factory=dict)
    cache_seconds: float = 0.0

    @property
    def caches_text(self) -> bool:
        """Text embeddings are cacheable only when they cannot change during the run."""
        return self.cfg.train.cache != "none" and not self.trains_text and not self.cfg.data.varies_captions

    @property
    def trains_text(self) -> bool:
        """Text conditioning needs gradients: a text-encoder LoRA, learned trigger vectors or a full TE fine-tune."""
        from lorastudio.training.methods import trains_text

        return self.cfg.network.train_text_encoder or trains_text(self.cfg)

    def build_caches(self, items: list[Item], cache_root: Path | None, *, show: bool) -> None:
        """Fill the latent and text caches, then release the encoders they replace."""
        import time

        if self.cfg.train.cache == "none":
            return
        start = time.perf_counter()
        vae = self.parts.vae
        self.latent_cache = TensorCache("latents", module_hash(vae, extra=self.family.name), root=cache_root)
        flips = (False, True) if self.cfg.data.flip else (False,)
        for item in items:
            self.image_sha[item.key] = file_sha256(item.image_path)
        wanted = {latent_key(self.image_sha[i.key], i.width, i.height, f): (i, f) for i in items for f in flips}

        def compute_latent(keys: list[str]) -> list[dict[str, Any]]:
            item, flip = wanted[keys[0]]
            pixels = collate_pixels([Example(item, item.caption, flip)])
            return [{"latent": encode_latents(vae, pixels)[0]}]

        made = self.latent_cache.fill(list(wanted), compute_latent, desc="caching latents", show=show)
        self.log(f"latent cache: {made} computed, {len(wanted) - made} reused")
        if self.caches_text:
            self._build_text_cache(items, cache_root, show=show)
        elif not self.trains_text:
            self.log("text cache off: caption shuffle/dropout changes captions between epochs (latents are still cached)")
        self.release_encoders()
        self.cache_seconds = time.perf_counter() - start

    def _build_text_cache(self, items: list[Item], cache_root: Path | None, *, show: bool) -> None:
        import torch

        encoders, tokenizers = self.parts.text_encoders, self.parts.tokenizers
        digest = module_hash(*encoders, extra=self.family.text_cache_tag + tokenizer_hash(tokenizers))
        self.text_cache = TensorCache("text", digest, root=cache_root)
        captions = {text_key(c): c for c in dict.fromkeys(i.caption for i in items)}

        def compute_text(keys: list[str]) -> list[dict[str, Any]]:
            with torch.no_grad():
                cond = self.family.encode_captions(encoders, tokenizers, [captions[keys[0]]])
            return [{k: v[0] for k, v in cond.items()}]

        made = self.text_cache.fill(list(captions), compute_text, desc="caching text", show=show)
        self.log(f"text cache: {made} computed, {len(captions) - made} reused")

    def release_encoders(self) -> None:
        """Drop the VAE and frozen text encoders that the caches made unnecessary."""
        self.parts.vae = None
        if self.text_cache is not None:
            self.parts.text_encoders = []
        gc.collect()

    def latents(self, examples: list[Example]) -> torch.Tensor:
        """[B, 4, h, w] scaled latents for the examples."""
        import torch

        if self.latent_cache is None:
            return encode_latents(self.parts.vae, collate_pixels(examples))
        keys = []
        for ex in examples:
            sha = self.image_sha[ex.item.key]
            keys.append(latent_key(sha, ex.item.width, ex.item.height, ex.flip))
        return torch.stack([self.latent_cache.get(k)["latent"] for k in keys])

    def conditioning(self, captions: list[str], text_encoders: list[Any]) -> dict[str, torch.Tensor]:
        """Conditioning tensors for the captions; `text_encoders` may be DDP-wrapped."""
        import torch

        if self.text_cache is not None:
            rows = [self.text_cache.get(text_key(c)) for c in captions]
            return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
        if self.trains_text:
            return self.family.encode_captions(text_encoders, self.parts.tokenizers, captions)
        with torch.no_grad():
            return self.family.encode_captions(text_encoders, self.parts.tokenizers, captions)

    @contextmanager
    def sampling_parts(self) -> Iterator[ModelParts]:
        """The full set of parts for a pipeline, loading released encoders for the duration."""
        parts = self.parts
        device = next(parts.unet.parameters()).device
        loaded_vae = loaded_text = False
        if parts.vae is None:
            parts.vae, loaded_vae = load_vae(self.family, self.cfg.model).to(device), True
        if not parts.text_encoders:
            encoders, _ = load_text_parts(self.family, self.cfg.model)
            parts.text_encoders, loaded_text = [e.to(device) for e in encoders], True
        try:
            yield parts
        finally:
            if loaded_vae:
                parts.vae = None
            if loaded_text:
                parts.text_encoders = []
            if loaded_vae or loaded_text:
                gc.collect()
