"""hf-caption: sentence captioners through transformers (BLIP, BLIP-2, GIT, Florence-2).

The architecture is read from the model's `config.json` (`model_type`) and mapped to its
native transformers class; the processor comes from `AutoProcessor`. A model is a hub id or
a local folder written by `save_pretrained`, and both go through the same `from_pretrained`
calls. Decoding is greedy by default so a batch gives the same captions as one image at a
time. This module also holds the loading helpers the other transformers backends share
(`hf_vlm`, `clip_probe`): options validation, device and dtype checks, and the config read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, Field, ValidationError

from lorastudio.captions.backends import BackendError, BackendOutput
from lorastudio.config.loader import Schema, format_validation_error

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from lorastudio.captions.vocab import Vocabulary

NAME = "hf-caption"
DEFAULT_MODEL = "Salesforce/blip-image-captioning-large"
OptionsT = TypeVar("OptionsT", bound=BaseModel)


@dataclass(frozen=True)
class CaptionArch:
    """How one captioner architecture is loaded and prompted."""

    model_class: str
    default_prompt: str | None = None
    # GIT conditions on "[CLS] prompt" without the trailing [SEP] its tokenizer appends;
    # the other architectures take the processor's ids as they are.
    cls_prefix_prompt: bool = False


ARCHITECTURES: dict[str, CaptionArch] = {
    "blip": CaptionArch("BlipForConditionalGeneration"),
    "blip-2": CaptionArch("Blip2ForConditionalGeneration"),
    "git": CaptionArch("GitForCausalLM", cls_prefix_prompt=True),
    "florence2": CaptionArch("Florence2ForConditionalGeneration", default_prompt="<DETAILED_CAPTION>"),
}


class HFCaptionOptions(Schema):
    """Generation settings of the hf-caption backend."""

    max_new_tokens: int = Field(default=48, ge=1, le=1024, description="longest caption, in model tokens")
    num_beams: int = Field(default=1, ge=1, le=16, description="beam search width; 1 = greedy (deterministic)")
    prompt: str | None = Field(
        default=None,
        description="text the caption continues (BLIP/GIT, e.g. 'a photo of') or the Florence-2 task "
        "token ('<CAPTION>', '<DETAILED_CAPTION>', '<MORE_DETAILED_CAPTION>'); default: the architecture's",
    )
    repetition_penalty: float = Field(default=1.0, ge=1.0, le=3.0, description=">1 discourages repeated words")


def parse_options(schema: type[OptionsT], options: dict | None, backend: str) -> OptionsT:
    """Validate a backend's options dict; unknown keys and bad values raise BackendError."""
    try:
        return schema.model_validate(dict(options or {}))
    except ValidationError as exc:
        raise BackendError(format_validation_error(schema, exc, f"{backend} options")) from None


def resolve_device(device: str) -> "torch.device":
    """A torch device for `device`; asking for a GPU that is not there is an error, not a fallback."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise BackendError(f"unknown device '{device}'; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendError(f"device '{device}' requested but no CUDA GPU is usable here; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise BackendError(f"device '{device}' requested but MPS is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise BackendError(f"device '{device}' is not supported; use cpu, cuda, cuda:N or mps")
    return dev


def resolve_dtype(dtype: str, device: "torch.device") -> "torch.dtype":
    """The torch dtype for `dtype`; float16 needs a GPU (many CPU kernels lack it)."""
    import torch

    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise BackendError(f"dtype must be one of {', '.join(table)} (got '{dtype}')")
    if dtype == "float16" and device.type == "cpu":
        raise BackendError("dtype float16 needs a GPU device; on CPU use float32 or bfloat16")
    return table[dtype]


def read_model_config(model: str, revision: str | None) -> dict[str, Any]:
    """The `config.json` of a local model folder or a hub id, as a dict."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        path = folder / "config.json"
        if not path.is_file():
            raise BackendError(f"{folder} has no config.json; give a folder written by save_pretrained or a hub id")
    elif folder.exists() or model.startswith((".", "/", "~")):
        raise BackendError(f"model '{model}' is not a folder; give a model folder or a hub id")
    else:
        from transformers.utils import cached_file

        try:
            path = Path(cached_file(model, "config.json", revision=revision))
        except OSError as exc:
            raise BackendError(
                f"cannot fetch config.json of '{model}' (offline, a typo, or a gated repo?): {exc}"
            ) from None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackendError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise BackendError(f"{path} has no 'model_type'; cannot tell which architecture this is")
    return data


def model_source(model: str) -> str:
    """The string from_pretrained gets: an absolute path for folders (provenance), else the id."""
    folder = Path(model).expanduser()
    return str(folder.resolve()) if folder.is_dir() else model


def load_pretrained(class_name: str, source: str, revision: str | None, **kwargs: Any) -> Any:
    """`transformers.<class_name>.from_pretrained(source)`; load errors name the model."""
    import transformers

    cls = getattr(transformers, class_name)
    try:
        return cls.from_pretrained(source, revision=revision, **kwargs)
    except (OSError, ValueError) as exc:
        raise BackendError(f"cannot load {class_name} from '{source}': {exc}") from None


def move_inputs(inputs: Any, device: "torch.device", dtype: "torch.dtype") -> dict[str, Any]:
    """Move processor outputs to the device; only floating tensors (pixels) take the dtype."""
    moved = {}
    for key, value in dict(inputs).items():
        if hasattr(value, "to"):
            value = value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
        moved[key] = value
    return moved


class HFCaptionBackend:
    """A transformers sentence captioner; one `generate` call per batch."""

    name = NAME

    def __init__(self, model: str, revision: str | None, device: str, dtype: str, options: HFCaptionOptions) -> None:
        config = read_model_config(model, revision)
        model_type = config["model_type"]
        arch = ARCHITECTURES.get(model_type)
        if arch is None:
            raise BackendError(
                f"hf-caption does not know model_type '{model_type}' of '{model}'; supported: "
                f"{', '.join(ARCHITECTURES)} (instruction VLMs go through the hf-vlm backend)"
            )
        self.arch, self.model_type, self.options = arch, model_type, options
        self.model_id, self.revision, self.dtype_name = model_source(model), revision, dtype
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.processor = load_pretrained("AutoProcessor", self.model_id, revision)
        self.model = load_pretrained(arch.model_class, self.model_id, revision, dtype=self.dtype)
        self.model.to(self.device).eval()
        self.prompt = options.prompt if options.prompt is not None else arch.default_prompt

    def _inputs(self, rgb: list["Image.Image"]) -> dict[str, Any]:
        """Processor outputs for a batch, with the conditioning prompt when there is one."""
        if not self.prompt:
            return dict(self.processor(images=rgb, return_tensors="pt"))
        if not self.arch.cls_prefix_prompt:
            # BLIP-2 and Florence-2 processors insert image tokens / expand task tokens here.
            return dict(self.processor(images=rgb, text=[self.prompt] * len(rgb), return_tensors="pt"))
        import torch

        inputs = dict(self.processor(images=rgb, return_tensors="pt"))
        tokenizer = self.processor.tokenizer
        ids = [tokenizer.cls_token_id, *tokenizer(self.prompt, add_special_tokens=False).input_ids]
        inputs["input_ids"] = torch.tensor([ids] * len(rgb))
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        return inputs

    def caption_batch(self, images: list["Image.Image"]) -> list[BackendOutput]:
        """One sentence caption per image, in order."""
        import torch

        if not images:
            return []
        inputs = self._inputs([im.convert("RGB") for im in images])
        inputs.pop("token_type_ids", None)  # the processors return them; generate() rejects them
        with torch.inference_mode():
            out = self.model.generate(
                **move_inputs(inputs, self.device, self.dtype),
                max_new_tokens=self.options.max_new_tokens,
                num_beams=self.options.num_beams,
                repetition_penalty=self.options.repetition_penalty,
                do_sample=False,
            )
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [BackendOutput(text=self._strip_prompt(t) or None) for t in texts]

    def _strip_prompt(self, text: str) -> str:
        # BLIP and GIT echo the conditioning prompt; the caption is what follows it.
        text = text.strip()
        if self.prompt and self.model_type != "florence2" and text.lower().startswith(self.prompt.lower()):
            text = text[len(self.prompt):].strip()
        return text

    def provenance(self) -> dict:
        """{"backend", "model", "revision", "params"} for the manifest."""
        params = {"model_type": self.model_type, "prompt": self.prompt, "dtype": self.dtype_name,
                  "device": str(self.device), **self.options.model_dump(exclude={"prompt"})}
        return {"backend": NAME, "model": self.model_id, "revision": self.revision, "params": params}


def create(
    *,
    model: str | None,
    revision: str | None,
    device: str,
    dtype: str,
    vocab: "Vocabulary",
    options: dict | None,
) -> HFCaptionBackend:
    """Build the hf-caption backend (the vocabulary is not used: captions are free text)."""
    del vocab
    opts = parse_options(HFCaptionOptions, options, NAME)
    return HFCaptionBackend(model or DEFAULT_MODEL, revision, device, dtype, opts)
