"""clip-probe: zero-shot CLIP / SigLIP scoring of the vocabulary's attributes.

Each attribute's prompts are embedded once (mean of its L2-normalised prompt embeddings).
Exclusive groups (at most one attribute applies, e.g. background colour) get a softmax over
their attributes plus a "none" option, the neutral baseline prompt. Non-exclusive
attributes (garnishes, props) are each a two-way softmax against that same baseline. The
caption keeps the phrases whose probability reaches the threshold (the best one per
exclusive group), in their slot (3 shot, 4 objective, 5 style).

The audit reuses `ClipProbe.embed_images` and `ClipProbe.score`: images are embedded once
and any vocabulary can be scored against the cached embeddings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from lorastudio.captions.backends import BackendError, BackendOutput
from lorastudio.captions.backends.hf_caption import (
    load_pretrained,
    model_source,
    move_inputs,
    parse_options,
    read_model_config,
    resolve_device,
    resolve_dtype,
)
from lorastudio.config.loader import Schema

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from lorastudio.captions.vocab import Attribute, Vocabulary

NAME = "clip-probe"
DEFAULT_MODEL = "openai/clip-vit-large-patch14"
SLOT_KEYS = {3: "shot", 4: "objective", 5: "style"}
# SigLIP was trained on text padded to its full length; CLIP on text padded to the longest.
PADDING = {"clip": True, "siglip": "max_length"}
TEXT_BATCH = 256  # prompts per text-encoder pass


class ClipProbeOptions(Schema):
    """Scoring settings of the clip-probe backend."""

    threshold: float = Field(default=0.5, ge=0.0, le=1.0,
                             description="min probability for a phrase to enter the caption")
    neutral_prompts: list[str] = Field(
        default_factory=lambda: ["a photo"], min_length=1,
        description="the baseline / 'none' option every attribute is compared against",
    )
    logit_scale: float | None = Field(
        default=None, gt=0.0,
        description="softmax temperature (multiplies cosine similarity); default: the model's own",
    )
    max_phrases: int = Field(
        default=12, ge=1, le=500,
        description="keep at most this many phrases per image, most probable first (CLIP reads 75 tokens)",
    )
    batch_size: int = Field(default=32, ge=1, le=4096, description="images per forward pass in embed_images")
    groups: list[str] | None = Field(default=None, description="score only these vocabulary groups (default: all)")


def _softmax(logits: "np.ndarray") -> "np.ndarray":
    import numpy as np

    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _normalise(vectors: "np.ndarray") -> "np.ndarray":
    import numpy as np

    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class ClipProbe:
    """A CLIP/SigLIP model that scores vocabulary attributes for images."""

    name = NAME

    def __init__(self, model: str, revision: str | None, device: str, dtype: str,
                 vocab: "Vocabulary", options: ClipProbeOptions) -> None:
        model_type = read_model_config(model, revision)["model_type"]
        if model_type not in PADDING:
            raise BackendError(f"clip-probe needs a CLIP or SigLIP model; '{model}' is model_type '{model_type}'")
        self.model_type, self.vocab, self.options = model_type, vocab, options
        self.model_id, self.revision, self.dtype_name = model_source(model), revision, dtype
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.processor = load_pretrained("AutoProcessor", self.model_id, revision)
        self.model = load_pretrained("AutoModel", self.model_id, revision, dtype=self.dtype)
        self.model.to(self.device).eval()
        if options.groups:
            unknown = sorted(set(options.groups) - set(vocab.groups()))
            if unknown:
                raise BackendError(f"clip-probe options.groups: unknown group(s) {', '.join(unknown)}")
        self._text_cache: dict[str, "np.ndarray"] = {}

    @property
    def logit_scale(self) -> float:
        """The factor applied to cosine similarities before a softmax."""
        if self.options.logit_scale is not None:
            return self.options.logit_scale
        return float(self.model.logit_scale.detach().float().exp().item())

    def embed_images(self, images: list["Image.Image"]) -> "np.ndarray":
        """L2-normalised image embeddings [len(images), dim], float32."""
        import numpy as np
        import torch

        chunks = []
        for start in range(0, len(images), self.options.batch_size):
            rgb = [im.convert("RGB") for im in images[start:start + self.options.batch_size]]
            inputs = move_inputs(self.processor(images=rgb, return_tensors="pt"), self.device, self.dtype)
            with torch.inference_mode():
                feats = self.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
            chunks.append(feats.float().cpu().numpy())
        dim = int(self.model.config.projection_dim) if hasattr(self.model.config, "projection_dim") else 0
        stacked = np.concatenate(chunks) if chunks else np.zeros((0, dim), dtype=np.float32)
        return _normalise(stacked).astype(np.float32)

    def embed_texts(self, texts: list[str]) -> "np.ndarray":
        """L2-normalised text embeddings [len(texts), dim]; each prompt is computed once."""
        import numpy as np
        import torch

        todo = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        for start in range(0, len(todo), TEXT_BATCH):
            chunk = todo[start:start + TEXT_BATCH]
            tokens = self.processor.tokenizer(chunk, padding=PADDING[self.model_type], truncation=True,
                                              return_tensors="pt")
            tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
            with torch.inference_mode():
                feats = self.model.get_text_features(**tokens).pooler_output.float().cpu().numpy()
            self._text_cache.update(zip(chunk, _normalise(feats)))
        return np.stack([self._text_cache[t] for t in texts]).astype(np.float32)

    def _prompt_vectors(self, attrs: list["Attribute"]) -> "np.ndarray":
        """One unit vector per attribute: the normalised mean of its prompts' embeddings."""
        import numpy as np

        prompts = [list(a.prompts or (a.phrase,)) for a in attrs]
        flat = self.embed_texts([p for group in prompts for p in group])
        rows, start = [], 0
        for group in prompts:
            rows.append(flat[start:start + len(group)].mean(axis=0))
            start += len(group)
        return _normalise(np.stack(rows))

    def group_probabilities(self, embeddings: "np.ndarray", attrs: list["Attribute"], exclusive: bool) -> "np.ndarray":
        """Per-image probabilities [N, len(attrs) + 1]; the last column is "none".

        Exclusive: one softmax over the attributes and the neutral baseline, so each row sums
        to 1. Non-exclusive: a separate attribute-vs-baseline softmax per attribute; the last
        column then holds the probability that none of them applies (product of the rest).
        """
        import numpy as np

        neutral = _normalise(self.embed_texts(self.options.neutral_prompts).mean(axis=0, keepdims=True))
        scale = self.logit_scale
        sims = np.asarray(embeddings, dtype=np.float32) @ np.concatenate([self._prompt_vectors(attrs), neutral]).T
        if exclusive:
            return _softmax(scale * sims)
        present = 1.0 / (1.0 + np.exp(-scale * (sims[:, :-1] - sims[:, -1:])))  # two-way softmax
        return np.concatenate([present, np.prod(1.0 - present, axis=1, keepdims=True)], axis=1)

    def score(self, embeddings: "np.ndarray", vocab: "Vocabulary") -> dict[str, "np.ndarray"]:
        """Attribute id -> per-image probability for every (selected) group of `vocab`."""
        import numpy as np

        wanted = set(self.options.groups) if self.options.groups else None
        groups = {g: attrs for g, attrs in vocab.groups().items() if wanted is None or g in wanted}
        if len(embeddings) == 0:  # nothing to score (its width may be unknown, e.g. shape (0, 0))
            return {a.id: np.zeros(0, dtype=np.float32) for attrs in groups.values() for a in attrs}
        # One batched pass over every prompt first; the per-group calls then hit the cache.
        self.embed_texts([p for attrs in groups.values() for a in attrs for p in (a.prompts or (a.phrase,))])
        result: dict[str, np.ndarray] = {}
        for attrs in groups.values():
            probs = self.group_probabilities(embeddings, attrs, attrs[0].exclusive)
            for i, attr in enumerate(attrs):
                result[attr.id] = probs[:, i]
        return result

    def choose(self, probs: dict[str, "np.ndarray"], index: int) -> BackendOutput:
        """Phrases for image `index`: above threshold, best one per exclusive group, at most max_phrases."""
        best: dict[str, tuple[float, "Attribute"]] = {}
        chosen: list[tuple[float, "Attribute"]] = []
        for attr_id, values in probs.items():
            attr, p = self.vocab.by_id(attr_id), float(values[index])
            if p < self.options.threshold:
                continue
            if attr.exclusive:
                if attr.group not in best or p > best[attr.group][0]:
                    best[attr.group] = (p, attr)
            else:
                chosen.append((p, attr))
        chosen = sorted([*best.values(), *chosen], key=lambda item: -item[0])[: self.options.max_phrases]
        slots: dict[str, list[str]] = {}
        for _, attr in chosen:
            slots.setdefault(SLOT_KEYS[attr.slot], []).append(attr.phrase)
        return BackendOutput(slots=slots or None, tags=[(a.id, round(p, 4)) for p, a in chosen])

    def caption_batch(self, images: list["Image.Image"]) -> list[BackendOutput]:
        """Vocabulary phrases per image, placed in slots 3/4/5."""
        if not images:
            return []
        probs = self.score(self.embed_images(images), self.vocab)
        return [self.choose(probs, i) for i in range(len(images))]

    def provenance(self) -> dict:
        """{"backend", "model", "revision", "params"} for the manifest."""
        params = {"model_type": self.model_type, "dtype": self.dtype_name, "device": str(self.device),
                  "packs": list(getattr(self.vocab, "packs", ())), **self.options.model_dump()}
        return {"backend": NAME, "model": self.model_id, "revision": self.revision, "params": params}


def create(
    *,
    model: str | None,
    revision: str | None,
    device: str,
    dtype: str,
    vocab: "Vocabulary",
    options: dict | None,
) -> ClipProbe:
    """Build the clip-probe backend over `vocab`."""
    opts = parse_options(ClipProbeOptions, options, NAME)
    return ClipProbe(model or DEFAULT_MODEL, revision, device, dtype, vocab, opts)
