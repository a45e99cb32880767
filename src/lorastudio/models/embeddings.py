"""Learned trigger embeddings: training-time splice, files each UI loads, and one loader.

Training keeps the base token table frozen and untouched: `SplicedEmbedding` holds the
[N, D] new rows as its only parameter and answers token ids past the base table from them,
so every base row stays bit-identical by construction and the optimizer sees N x D numbers,
not the 49,408 x D table the anchors put in AdamW.

Files (reference/ti-dreambooth.md §6.2): `<trigger>.safetensors` with `emb_params` (SD1/2,
one key: A1111, ComfyUI and kohya read it) or `clip_l` + `clip_g` (SDXL); the trigger is the
file stem (A1111 names embeddings after the file; ComfyUI needs `embedding:<stem>`).
`load_embedding` puts such a file (or a `bundle_emb.*` LoRA) into a diffusers pipeline while
avoiding its traps: the token is named after the file, not the key, and SDXL files are split
between both encoders.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

SD_KEY = "emb_params"
SDXL_KEYS = ("clip_l", "clip_g")
BUNDLE_PREFIX = "bundle_emb."


class EmbeddingError(ValueError):
    """An embedding file or trigger that cannot be used; the message names it."""


def token_names(trigger: str, num_vectors: int) -> list[str]:
    """The tokens one trigger expands to, named as diffusers names them: t, t_1, ..., t_{N-1}."""
    return [trigger] + [f"{trigger}_{i}" for i in range(1, num_vectors)]


def expand_trigger(text: str, trigger: str, num_vectors: int) -> str:
    """Replace the trigger word in `text` by its N tokens (whole words only)."""
    if num_vectors == 1:
        return text
    return re.sub(rf"(?<![\w]){re.escape(trigger)}(?![\w])", " ".join(token_names(trigger, num_vectors)), text)


def vocabulary_clash(tokenizer: Any, trigger: str, num_vectors: int) -> str | None:
    """The first of the trigger's token names the tokenizer already knows, else None."""
    vocab = tokenizer.get_vocab()
    for name in token_names(trigger, num_vectors):
        if name in vocab or f"{name}</w>" in vocab:
            return name
    return None


class SplicedEmbedding:
    """Factory for the token-embedding module that adds N trainable rows to a frozen table."""

    @staticmethod
    def build(base: Any, new_rows: torch.Tensor) -> Any:
        """An nn.Module: ids < len(base) come from `base` (frozen), the rest from `new_rows`."""
        import torch

        class _Spliced(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.base = base.requires_grad_(False)
                self.new_rows = torch.nn.Parameter(new_rows.detach().clone().float())

            @property
            def weight(self) -> torch.Tensor:
                # Pipelines and loaders that read the table see base + new rows.
                return torch.cat([self.base.weight, self.new_rows.to(self.base.weight.dtype)])

            @property
            def num_embeddings(self) -> int:
                return self.base.num_embeddings + self.new_rows.shape[0]

            @property
            def embedding_dim(self) -> int:
                return self.base.embedding_dim

            def forward(self, ids: torch.Tensor) -> torch.Tensor:
                size = self.base.num_embeddings
                out = self.base(ids.clamp(max=size - 1))
                new = self.new_rows.to(out.dtype)[(ids - size).clamp(min=0)]
                return torch.where((ids >= size).unsqueeze(-1), new, out)

        return _Spliced()


def init_rows(encoder: Any, tokenizer: Any, init: str, num_vectors: int, generator: torch.Generator) -> torch.Tensor:
    """[N, D] initial vectors: the init words' token rows repeated or cut to N, or random."""
    import torch

    table = encoder.get_input_embeddings().weight.detach().float()
    if init == "random":
        std = table.std().item()
        return torch.randn((num_vectors, table.shape[1]), generator=generator) * std
    ids = tokenizer(init, add_special_tokens=False).input_ids
    if not ids:
        raise EmbeddingError(f"ti.init '{init}' encodes to no tokens; give a word such as the class noun")
    rows = table[torch.tensor(ids)]
    reps = -(-num_vectors // len(ids))
    return rows.repeat(reps, 1)[:num_vectors].clone()


def add_trigger(encoder: Any, tokenizer: Any, trigger: str, rows: torch.Tensor) -> Any:
    """Add the trigger's tokens to `tokenizer` and splice `rows` into `encoder`; returns the parameter."""
    names = token_names(trigger, rows.shape[0])
    clash = vocabulary_clash(tokenizer, trigger, rows.shape[0])
    if clash is not None:
        raise EmbeddingError(f"ti.trigger: '{clash}' is already in the tokenizer's vocabulary; choose a new word")
    base = encoder.get_input_embeddings()
    if len(tokenizer) != base.num_embeddings:
        raise EmbeddingError(f"tokenizer has {len(tokenizer)} tokens but the text encoder {base.num_embeddings} rows; cannot add the trigger")
    tokenizer.add_tokens(names)
    ids = tokenizer.convert_tokens_to_ids(names)
    if ids != list(range(base.num_embeddings, base.num_embeddings + len(names))):
        raise EmbeddingError(f"the tokenizer gave the trigger ids {ids}, not the next free rows")
    spliced = SplicedEmbedding.build(base, rows)
    encoder.set_input_embeddings(spliced)
    return spliced.new_rows


def embedding_tensors(family: str, vectors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The kohya/A1111 layout: `emb_params` (SD1/2) or `clip_l` + `clip_g` (SDXL)."""
    rows = [v.detach().float().cpu().contiguous() for v in vectors]
    if family == "sdxl":
        if len(rows) != 2:
            raise EmbeddingError(f"an SDXL embedding needs 2 encoders' vectors, got {len(rows)}")
        return dict(zip(SDXL_KEYS, rows, strict=True))
    return {SD_KEY: rows[0]}


def write_embedding(path: Path, family: str, vectors: list[torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write `<trigger>.safetensors` (the stem is the prompt word in A1111 and ComfyUI)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(embedding_tensors(family, vectors), str(path), metadata={"format": "pt", **(metadata or {})})
    return path


def write_diffusers_embeddings(folder: Path, trigger: str, vectors: list[torch.Tensor]) -> list[Path]:
    """`learned_embeds.safetensors` (+ `_2` for a second encoder) as diffusers' TI scripts write."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, v in enumerate(vectors):
        path = folder / ("learned_embeds.safetensors" if i == 0 else f"learned_embeds_{i + 1}.safetensors")
        save_file({trigger: v.detach().float().cpu().contiguous()}, str(path), metadata={"format": "pt"})
        paths.append(path)
    return paths


def split_bundle(tensors: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(LoRA tensors, {embedding name: its tensors}) from a file that may hold `bundle_emb.*` keys."""
    lora, bundles = {}, {}
    for key, value in tensors.items():
        if key.startswith(BUNDLE_PREFIX):
            name, _, sub = key[len(BUNDLE_PREFIX):].partition(".")
            sub = "*" if sub.startswith("string_to_param.") else sub
            bundles.setdefault(name, {})[sub] = value
        else:
            lora[key] = value
    return lora, bundles


def bundle_tensors(lora: dict[str, Any], trigger: str, embedding: dict[str, Any]) -> dict[str, Any]:
    """A LoRA state dict with the embedding added as `bundle_emb.<trigger>.<key>` (A1111 only)."""
    return {**lora, **{f"{BUNDLE_PREFIX}{trigger}.{k}": v for k, v in embedding.items()}}


def vectors_for_encoders(tensors: dict[str, Any], widths: list[int], source: str) -> list[torch.Tensor]:
    """Pick each text encoder's [N, D] vectors from an embedding dict by key and width."""
    if len(widths) == 2:
        if not all(k in tensors for k in SDXL_KEYS):
            raise EmbeddingError(f"{source}: an SDXL embedding needs clip_l and clip_g keys, found {sorted(tensors)}")
        vectors = [tensors["clip_l"], tensors["clip_g"]]
    else:
        if len(tensors) != 1:
            raise EmbeddingError(f"{source}: expected one embedding tensor for this model, found keys {sorted(tensors)}")
        vectors = [next(iter(tensors.values()))]
    vectors = [v.unsqueeze(0) if v.ndim == 1 else v for v in vectors]
    for v, width in zip(vectors, widths, strict=True):
        if v.shape[-1] != width:
            raise EmbeddingError(f"{source}: vectors are {v.shape[-1]} wide but the text encoder is {width} wide (another model family?)")
    return vectors


def is_embedding_file(tensors: dict[str, Any]) -> bool:
    """True for an embedding dict: clip_l + clip_g, or one 1-D/2-D tensor under a token-like key
    (`emb_params`, `<s0>`, a trigger; never a dotted module name such as `model.weight`)."""
    if set(tensors) == set(SDXL_KEYS):
        return True
    if len(tensors) != 1:
        return False
    key, value = next(iter(tensors.items()))
    return value.ndim in (1, 2) and "." not in key and "lora" not in key


def load_embedding(pipe: Any, tensors: dict[str, Any], trigger: str, source: str = "embedding") -> None:
    """Load one embedding into a diffusers pipeline under `trigger` on every text encoder."""
    pairs = [(pipe.text_encoder, pipe.tokenizer)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.text_encoder_2, pipe.tokenizer_2))
    widths = [enc.get_input_embeddings().weight.shape[1] for enc, _ in pairs]
    vectors = vectors_for_encoders(tensors, widths, source)
    for (encoder, tokenizer), v in zip(pairs, vectors, strict=True):
        if vocabulary_clash(tokenizer, trigger, v.shape[0]) is not None:
            raise EmbeddingError(f"{source}: '{trigger}' is already loaded or in the vocabulary of this pipeline")
        pipe.load_textual_inversion(v.to(encoder.dtype), token=trigger, text_encoder=encoder, tokenizer=tokenizer)


def unload_embedding(pipe: Any, trigger: str) -> None:
    """Remove a trigger's tokens (t, t_1, ...) and rows from every text encoder of `pipe`."""
    pairs = [(pipe.text_encoder, pipe.tokenizer)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.text_encoder_2, pipe.tokenizer_2))
    for encoder, tokenizer in pairs:
        names = [t for t in tokenizer.get_added_vocab() if t == trigger or re.fullmatch(rf"{re.escape(trigger)}_\d+", t)]
        if names:
            pipe.unload_textual_inversion(names, tokenizer=tokenizer, text_encoder=encoder)
