"""hf-vlm: instruction VLMs asked for the caption slots as JSON.

Supported architectures (native transformers classes, chosen from `config.json`'s
`model_type`): Idefics3 / SmolVLM, Qwen2-VL / Qwen2.5-VL and LLaVA-architecture models such
as JoyCaption. The model gets one chat turn holding the image and a prompt that lists the
slots in the golden order; a reply that parses as a JSON object with those keys becomes
`BackendOutput.slots`, anything else is kept as `BackendOutput.text` for the caption parser.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
    from PIL import Image

    from lorastudio.captions.vocab import Vocabulary

NAME = "hf-vlm"
DEFAULT_MODEL = "HuggingFaceTB/SmolVLM-256M-Instruct"
LIST_SLOTS = ("shot", "objective", "style")

SLOT_PROMPT = """Write a training caption for this photo as one JSON object and nothing else.
Use these keys, in this order (the golden order of the caption):
"subject": what the photo shows, e.g. "a photo of yangnyeom chicken";
"shot": camera angle and framing phrases, e.g. ["45-degree angle", "close-up shot"];
"objective": every visible thing that is not the look (vessel, surface, background, garnish, props),
e.g. ["on a white plate", "sprinkled with sesame seeds", "black background"];
"style": subjective qualities: lighting, colour, finish, mood, e.g. ["glossy", "studio lighting"].
Name plain things too (plain background, neutral lighting). Short English phrases only."""


@dataclass(frozen=True)
class VlmArch:
    """How one VLM architecture is loaded and fed."""

    model_class: str
    # Idefics3/SmolVLM processors want one list of images per prompt; the others a flat list.
    nested_images: bool = False
    # transformers builds Qwen2-VL's processor with a video processor that imports torchvision.
    needs_torchvision: bool = False


ARCHITECTURES: dict[str, VlmArch] = {
    "llava": VlmArch("LlavaForConditionalGeneration"),
    "llava_next": VlmArch("LlavaNextForConditionalGeneration"),
    "idefics3": VlmArch("Idefics3ForConditionalGeneration", nested_images=True),
    "smolvlm": VlmArch("SmolVLMForConditionalGeneration", nested_images=True),
    "qwen2_vl": VlmArch("Qwen2VLForConditionalGeneration", needs_torchvision=True),
    "qwen2_5_vl": VlmArch("Qwen2_5_VLForConditionalGeneration", needs_torchvision=True),
}


class HFVlmOptions(Schema):
    """Generation settings of the hf-vlm backend."""

    max_new_tokens: int = Field(default=256, ge=1, le=4096, description="longest reply, in model tokens")
    prompt: str = Field(default=SLOT_PROMPT,
                        description="the instruction sent with each image (default asks for slot JSON)")
    system_prompt: str | None = Field(default=None, description="optional system turn before the instruction")
    repetition_penalty: float = Field(default=1.0, ge=1.0, le=3.0, description=">1 discourages repeated words")
    vocabulary_hints: int = Field(
        default=0, ge=0, le=500,
        description="append up to this many of the vocabulary's canonical phrases to the prompt, so replies "
        "use the words the audit matches (0 = none)",
    )


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def parse_slot_json(text: str) -> dict | None:
    """Slots from a reply holding a JSON object, or None when it does not parse as one.

    Accepts a fenced ```json block or text around the object. The result keeps only the
    known keys: "subject" (str) and "shot" / "objective" / "style" (lists of phrases; a
    comma-separated string is split). Wrong types or no known key at all count as malformed.
    """
    if not text:
        return None
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(body[start:end + 1])
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    slots: dict[str, Any] = {}
    subject = data.get("subject")
    if isinstance(subject, str) and subject.strip():
        slots["subject"] = subject.strip()
    elif subject is not None and not isinstance(subject, str):
        return None
    for key in LIST_SLOTS:
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None
        phrases = [v.strip() for v in value if v.strip()]
        if phrases:
            slots[key] = phrases
    known = {"subject", *LIST_SLOTS}
    return slots if slots or known & set(data) else None


def vocabulary_hint(vocab: "Vocabulary", limit: int) -> str:
    """A prompt line listing up to `limit` canonical phrases per slot, round-robin over groups."""
    by_slot: dict[str, list[list[str]]] = {}
    for attrs in vocab.groups().values():
        key = {3: "shot", 4: "objective", 5: "style"}[attrs[0].slot]
        by_slot.setdefault(key, []).append([a.phrase for a in attrs])
    picked: dict[str, list[str]] = {key: [] for key in LIST_SLOTS if key in by_slot}
    total, depth = 0, 0
    # Round-robin so every group gets its first phrases in before any group gets many.
    while total < limit and any(depth < len(g) for groups in by_slot.values() for g in groups):
        for key, groups in by_slot.items():
            for group in groups:
                if depth < len(group) and total < limit:
                    picked[key].append(group[depth])
                    total += 1
        depth += 1
    parts = [f'{key}: {", ".join(phrases)}' for key, phrases in picked.items() if phrases]
    return "Prefer these phrases where they fit. " + "; ".join(parts) + "." if parts else ""


class HFVlmBackend:
    """A transformers instruction VLM; one left-padded `generate` call per batch."""

    name = NAME

    def __init__(self, model: str, revision: str | None, device: str, dtype: str, options: HFVlmOptions,
                 vocab: "Vocabulary") -> None:
        model_type = read_model_config(model, revision)["model_type"]
        arch = ARCHITECTURES.get(model_type)
        if arch is None:
            raise BackendError(
                f"hf-vlm does not know model_type '{model_type}' of '{model}'; supported: "
                f"{', '.join(ARCHITECTURES)} (BLIP/GIT/Florence-2 go through the hf-caption backend)"
            )
        if arch.needs_torchvision and importlib.util.find_spec("torchvision") is None:
            raise BackendError(f"{model_type} models need torchvision (transformers' processor for them "
                               "imports it); install the torchvision build that matches your torch, "
                               "or use a SmolVLM/LLaVA model")
        self.arch, self.model_type, self.options = arch, model_type, options
        self.model_id, self.revision, self.dtype_name = model_source(model), revision, dtype
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.processor = load_pretrained("AutoProcessor", self.model_id, revision)
        if getattr(self.processor, "chat_template", None) is None:
            raise BackendError(f"'{model}' ships no chat template; hf-vlm needs an instruction-tuned model")
        # Decoder-only generation continues from the last position, so pads go on the left.
        self.processor.tokenizer.padding_side = "left"
        self.model = load_pretrained(arch.model_class, self.model_id, revision, dtype=self.dtype)
        self.model.to(self.device).eval()
        self.instruction = options.prompt
        if options.vocabulary_hints:
            hint = vocabulary_hint(vocab, options.vocabulary_hints)
            self.instruction = f"{options.prompt}\n{hint}" if hint else options.prompt
        self.chat_text = self._chat_text()

    def _chat_text(self) -> str:
        """The prompt of one image turn, rendered by the model's own chat template."""
        messages = []
        if self.options.system_prompt:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.options.system_prompt}]})
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.instruction}]})
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def generate_text(self, images: list["Image.Image"]) -> list[str]:
        """The raw reply for each image (what caption_batch parses)."""
        import torch

        rgb = [im.convert("RGB") for im in images]
        batch_images = [[im] for im in rgb] if self.arch.nested_images else rgb
        inputs = self.processor(text=[self.chat_text] * len(rgb), images=batch_images, padding=True,
                                return_tensors="pt")
        prompt_len = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            out = self.model.generate(
                **move_inputs(inputs, self.device, self.dtype),
                max_new_tokens=self.options.max_new_tokens,
                repetition_penalty=self.options.repetition_penalty,
                do_sample=False,
                num_beams=1,
            )
        return [t.strip() for t in self.processor.batch_decode(out[:, prompt_len:], skip_special_tokens=True)]

    def caption_batch(self, images: list["Image.Image"]) -> list[BackendOutput]:
        """Slots from each JSON reply; a malformed reply is passed on as text."""
        if not images:
            return []
        outputs = []
        for reply in self.generate_text(images):
            slots = parse_slot_json(reply)
            outputs.append(BackendOutput(slots=slots) if slots is not None else BackendOutput(text=reply or None))
        return outputs

    def provenance(self) -> dict:
        """{"backend", "model", "revision", "params"} for the manifest."""
        params = {"model_type": self.model_type, "dtype": self.dtype_name, "device": str(self.device),
                  **self.options.model_dump(), "prompt": self.instruction}
        return {"backend": NAME, "model": self.model_id, "revision": self.revision, "params": params}


def create(
    *,
    model: str | None,
    revision: str | None,
    device: str,
    dtype: str,
    vocab: "Vocabulary",
    options: dict | None,
) -> HFVlmBackend:
    """Build the hf-vlm backend (the vocabulary only feeds the optional prompt hints)."""
    opts = parse_options(HFVlmOptions, options, NAME)
    return HFVlmBackend(model or DEFAULT_MODEL, revision, device, dtype, opts, vocab)
