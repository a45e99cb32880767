"""Captioning backends: one module per captioner, chosen by name and imported lazily.

Every backend module exposes `create(model=, revision=, device=, dtype=, vocab=, options=)`
returning an object that satisfies `CaptionBackend`. Heavy imports (torch, transformers,
onnxruntime) happen inside those modules, so listing backends costs nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from PIL import Image

    from lorastudio.captions.vocab import Vocabulary

# CLI name -> module under lorastudio.captions.backends
BACKENDS: dict[str, str] = {
    "hf-caption": "hf_caption",
    "hf-vlm": "hf_vlm",
    "tagger": "tagger",
    "clip-probe": "clip_probe",
    "manual": "manual",
}

DTYPES = ("float32", "float16", "bfloat16")


class BackendError(RuntimeError):
    """A backend cannot be created or run; the message says what to install or fix."""


@dataclass
class BackendOutput:
    """What a backend says about one image. Any of the three parts may be empty."""

    text: str | None = None
    slots: dict | None = None
    tags: list[tuple[str, float]] = field(default_factory=list)

    def is_empty(self) -> bool:
        """True when the backend had nothing to say (e.g. no manual caption for this image)."""
        return not (self.text and self.text.strip()) and not self.slots and not self.tags


@runtime_checkable
class CaptionBackend(Protocol):
    """A captioner: a batch of RGB images in, one BackendOutput per image out."""

    name: str

    def caption_batch(self, images: list["Image.Image"]) -> list[BackendOutput]:
        """Caption a batch; the result has one entry per image, in order."""
        ...

    def provenance(self) -> dict:
        """{"backend", "model", "revision", "params"} recorded with every caption."""
        ...


@runtime_checkable
class RecordCaptionBackend(Protocol):
    """A backend that captions from the manifest records instead of pixels (e.g. `manual`).

    `run.caption_dataset` calls `caption_records` when a backend has it and then decodes no
    images at all.
    """

    name: str

    def caption_records(self, dataset_dir: Path, records: list[dict[str, Any]]) -> list[BackendOutput]:
        """One BackendOutput per record, in order."""
        ...

    def provenance(self) -> dict:
        """{"backend", "model", "revision", "params"}."""
        ...


def available_backends() -> list[str]:
    """Names of the backends whose module is installed in this build."""
    import importlib.util

    return [name for name, mod in BACKENDS.items() if importlib.util.find_spec(f"{__name__}.{mod}") is not None]


def get_backend(
    name: str,
    *,
    model: str | None = None,
    revision: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    vocab: "Vocabulary",
    options: dict | None = None,
) -> CaptionBackend:
    """Create the backend called `name` (see BACKENDS); errors list the valid names."""
    module_name = BACKENDS.get(name)
    if module_name is None:
        raise BackendError(f"unknown caption backend '{name}'; choose one of: {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise BackendError(f"dtype must be one of {', '.join(DTYPES)} (got '{dtype}')")
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{module_name}":
            raise BackendError(f"caption backend '{name}' is not available in this build") from None
        raise BackendError(f"caption backend '{name}' needs the package '{exc.name}': pip install {exc.name}") from None
    return module.create(model=model, revision=revision, device=device, dtype=dtype, vocab=vocab, options=dict(options or {}))
