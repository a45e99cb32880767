"""Trigger embeddings in the service: a textual-inversion file registered under an id of its
own, or a pivotal LoRA registered together with its embedding file.

Registration reads only the safetensors header (no torch in the API process): `emb_params`
or one token-named tensor for SD1/2, `clip_l` + `clip_g` for SDXL, float vectors whose
widths match the served text encoders, and a trigger (given, else the file's
`lorastudio.trigger` metadata, else the file name as A1111 does) that is a new word for the
served tokenizer. Workers load what a row names through the one loader that `generate`,
`enhance`, `sample` and `evaluate` use (`evaluation.loading.apply_loras`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from lorastudio.serving.uploads import UploadError

MAX_VECTORS = 75  # CLIP's prompt holds 75 tokens
FLOAT_DTYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class EmbeddingInfo:
    """What registration learned from an embedding file's header."""

    trigger: str
    vectors: int
    family: str  # "sd" (SD1/2) or "sdxl"


def _read_json(model: str, folder: str, name: str) -> dict | None:
    """A JSON file of the served model folder, or None (a hub id, a missing or bad file)."""
    try:
        data = json.loads((Path(model) / folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def served_text_widths(model: str) -> list[int | None]:
    """Hidden widths of the served model's text encoders (None where no local config says)."""
    folders = ["text_encoder"] + (["text_encoder_2"] if (Path(model) / "text_encoder_2").is_dir() else [])
    return [(_read_json(model, folder, "config.json") or {}).get("hidden_size") for folder in folders]


def _vocabulary_clash(model: str, trigger: str, vectors: int) -> str | None:
    from lorastudio.models.embeddings import token_names

    for folder in ("tokenizer", "tokenizer_2"):
        vocab = _read_json(model, folder, "vocab.json") or {}
        for name in token_names(trigger, vectors):
            if name in vocab or f"{name}</w>" in vocab:
                return name
    return None


def is_embedding_header(header: object) -> bool:
    """True when a checked safetensors header holds an embedding rather than a LoRA."""
    from lorastudio.models.embeddings import is_embedding_file

    return is_embedding_file({k: SimpleNamespace(ndim=len(v.shape)) for k, v in header.tensors.items()})


def inspect_embedding(path: Path, base_family: str, model: str, trigger: str | None = None,
                      filename: str | None = None) -> EmbeddingInfo:
    """Check an uploaded embedding file against the served model; see the module docstring."""
    from lorastudio.config.methods import TRIGGER_PATTERN
    from lorastudio.models.embeddings import SDXL_KEYS
    from lorastudio.models.weights_file import WeightsFileError, read_header

    try:
        header = read_header(path)
    except WeightsFileError as exc:
        raise UploadError(422, "not_safetensors", str(exc).split(": ", 1)[-1]) from None
    if not is_embedding_header(header):
        raise UploadError(422, "unsupported_embedding", "not an embedding file: expected emb_params (SD1/2) or "
                          f"clip_l + clip_g (SDXL), found keys {sorted(header.tensors)[:4]}")
    if base_family == "flux":
        raise UploadError(422, "embedding_family_mismatch", "trigger embeddings are served for sd15, sd2 and sdxl "
                          "base models; the served base model is flux")
    family = "sdxl" if set(header.tensors) == set(SDXL_KEYS) else "sd"
    if (family == "sdxl") != (base_family == "sdxl"):
        raise UploadError(422, "embedding_family_mismatch", f"this embedding is for {'sdxl' if family == 'sdxl' else 'sd15/sd2'} "
                          f"and the served base model is {base_family}")
    tensors = [header.tensors[k] for k in SDXL_KEYS] if family == "sdxl" else list(header.tensors.values())
    counts = {t.shape[0] if len(t.shape) == 2 else 1 for t in tensors}
    if any(t.dtype not in FLOAT_DTYPES for t in tensors):
        raise UploadError(422, "unsupported_embedding", f"embedding vectors must be float ({', '.join(FLOAT_DTYPES)})")
    if len(counts) != 1 or not 1 <= min(counts) <= MAX_VECTORS:
        raise UploadError(422, "unsupported_embedding", f"clip_l and clip_g must hold the same number of vectors, "
                          f"1 to {MAX_VECTORS}; found {sorted(counts)}")
    for tensor, width, encoder in zip(tensors, served_text_widths(model), ("text_encoder", "text_encoder_2")):
        if width is not None and tensor.shape[-1] != width:
            raise UploadError(422, "embedding_model_mismatch", f"the vectors are {tensor.shape[-1]} wide and the served "
                              f"{encoder} is {width} wide (an embedding made for another base model)")
    word = trigger or header.metadata.get("lorastudio.trigger") or Path(filename or path.name).stem
    if not TRIGGER_PATTERN.match(word) or len(word) > 64:
        raise UploadError(422, "bad_trigger", f"trigger '{word[:80]}' must be 1-64 lowercase letters, digits and _ "
                          "(give one with the trigger field)")
    vectors = counts.pop()
    clash = _vocabulary_clash(model, word, vectors)
    if clash is not None:
        raise UploadError(422, "trigger_in_vocabulary", f"'{clash}' is already a word of the served tokenizer; "
                          "choose another trigger")
    return EmbeddingInfo(word, vectors, family)


def embedding_spec(data_dir: Path, row: dict, name: str, scale: float) -> object:
    """The loader's LoraSpec for a registered row: its LoRA (unless TI-only) and its embedding,
    each file checked against its recorded SHA-256 (JobFailed when missing or changed)."""
    from lorastudio.evaluation.loading import LoraSpec
    from lorastudio.serving.runners import checked_file

    embedding = row["embedding"]
    emb_path = checked_file(data_dir, "loras", embedding["sha256"], f"the embedding of '{row['id']}'")
    ti_only = row["format"] == "embedding"
    lora = emb_path if ti_only else checked_file(data_dir, "loras", row["sha256"], f"LoRA '{row['id']}'")
    return LoraSpec(path=lora, scale=scale, name=name, embeddings=(emb_path,), has_lora=not ti_only,
                    triggers=(embedding["trigger"],))


def request_rows(store: object, refs: list[dict]) -> dict[str, dict]:
    """The registry rows a job references, by id: each still the one the request was checked
    against, and no two embeddings answering to the same trigger word."""
    from lorastudio.serving.trace import JobFailed

    rows: dict[str, dict] = {}
    owners: dict[str, str] = {}
    for ref in refs:
        row = store.get_lora(ref["id"])
        if row is None or row["sha256"] != ref["sha256"]:
            raise JobFailed("lora_unusable", f"LoRA '{ref['id']}' was deleted or replaced after the request")
        word = (row.get("embedding") or {}).get("trigger")
        if word is not None and owners.setdefault(word, ref["id"]) != ref["id"]:
            raise JobFailed("lora_unusable", f"'{owners[word]}' and '{ref['id']}' both answer to the trigger '{word}'")
        rows[ref["id"]] = row
    return rows


def holds_embedding(path: Path) -> bool:
    """Whether an uploaded file is a readable safetensors embedding (else it goes the LoRA way)."""
    from lorastudio.models.weights_file import WeightsFileError, read_header

    try:
        return is_embedding_header(read_header(path))
    except WeightsFileError:
        return False


def register_embedding(settings: object, store: object, lora_path: Path, lora_id: str, key_id: str,
                       embedding_path: Path | None = None, trigger: str | None = None,
                       filename: str | None = None) -> dict:
    """Register a textual-inversion file (`lora_path` is the embedding, `embedding_path` None)
    or a pivotal pair (the LoRA and its embedding); both files are checked before either is kept."""
    from lorastudio.serving.routes.loras import move_into_place
    from lorastudio.serving.uploads import base_width, inspect_lora

    emb_path = embedding_path or lora_path
    try:
        info = inspect_embedding(emb_path, settings.family, str(settings.model), trigger, filename)
        lora = inspect_lora(lora_path, settings.family, base_width(settings.model)) if embedding_path else None
    except UploadError:
        for path in {lora_path, emb_path}:
            path.unlink(missing_ok=True)
        raise
    emb_sha, emb_file = move_into_place(settings, emb_path)
    embedding = {"trigger": info.trigger, "vectors": info.vectors, "sha256": emb_sha, "file": emb_file}
    if lora is None:
        store.add_lora(lora_id, sha256=emb_sha, family=settings.family, fmt="embedding", modules=info.vectors,
                       file=emb_file, key_id=key_id, embedding=embedding)
    else:
        sha, file = move_into_place(settings, lora_path)
        store.add_lora(lora_id, sha256=sha, family=lora.family, fmt=lora.format, modules=lora.modules, file=file,
                       key_id=key_id, embedding=embedding)
    return {**store.get_lora(lora_id), "coverage": ""}
