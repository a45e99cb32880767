"""Load a base pipeline and put any number of LoRAs on it, each at its own scale.

A LoRA is named on the command line as `FILE[:SCALE]`. FILE may be a kohya `.safetensors`
file (ours or another trainer's), a diffusers `pytorch_lora_weights.safetensors`, a folder
holding one, or one of our checkpoint folders (`checkpoints/step_N`, `final/`). Each file
becomes one named diffusers adapter, so several can be active at once and their scales
changed between generations without reloading weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Which diffusers class renders each (family, task). Families sd15 and sd2 share classes;
# the scheduler config in the model folder carries their difference (v-prediction).
PIPELINE_CLASSES: dict[str, dict[str, str]] = {
    "text2img": {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "flux": "FluxPipeline"},
    "img2img": {"sd": "StableDiffusionImg2ImgPipeline", "sdxl": "StableDiffusionXLImg2ImgPipeline", "flux": "FluxImg2ImgPipeline"},
    "controlnet_img2img": {"sd": "StableDiffusionControlNetImg2ImgPipeline", "sdxl": "StableDiffusionXLControlNetImg2ImgPipeline",
                           "flux": "FluxControlNetImg2ImgPipeline"},
}
FAMILIES = ("auto", "sd15", "sd2", "sdxl", "flux")
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


class LoadError(ValueError):
    """A model or LoRA argument that cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to apply: the weights file, its scale and the adapter name it gets."""

    path: Path
    scale: float
    name: str
    embeddings: tuple[Path, ...] = ()  # trigger embeddings loaded with it (TI / pivotal), named after each file
    has_lora: bool = True  # False for a TI-only embedding
    triggers: tuple[str, ...] = ()  # each embedding's prompt word when not its file stem (the server's stored files)


def parse_lora_arg(text: str) -> tuple[str, float]:
    """`FILE[:SCALE]` -> (FILE, SCALE); the scale defaults to 1.0.

    Only a trailing `:number` is a scale, so paths that contain colons still work.
    """
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return text, 1.0


def resolve_lora_file(path: Path | str) -> Path:
    """The `.safetensors` file a LoRA argument names (checkpoint folders included).

    Pickle formats (.ckpt/.pt/.bin) are refused: loading them can run code.
    """
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "diffusers" / DIFFUSERS_WEIGHT_NAME, path / DIFFUSERS_WEIGHT_NAME, path / "lora.safetensors"):
            if candidate.is_file():
                return candidate
        raise LoadError(f"{path}: folder holds no LoRA ({DIFFUSERS_WEIGHT_NAME} or lora.safetensors)")
    if not path.is_file():
        raise LoadError(f"{path}: no such LoRA file")
    if path.suffix.lower() != ".safetensors":
        raise LoadError(f"{path}: LoRA files must be .safetensors ('{path.suffix}' may be a pickle); convert it with `lorastudio export`")
    from lorastudio.models.weights_file import WeightsFileError, read_header

    try:
        read_header(path)
    except WeightsFileError as exc:
        raise LoadError(str(exc)) from None
    return path


def _adapter_name(index: int, path: Path) -> str:
    # PEFT adapter names end up in module attribute paths: keep them to plain identifiers.
    stem = path.parent.parent.name if path.name == DIFFUSERS_WEIGHT_NAME and path.parent.name == "diffusers" else path.stem
    return f"lora{index}_" + re.sub(r"[^0-9A-Za-z_]+", "_", stem)[:40]


def lora_specs(args: list[str]) -> list[LoraSpec]:
    """Parse `FILE[:SCALE]` arguments into specs with unique adapter names."""
    specs = []
    for i, arg in enumerate(args):
        raw, scale = parse_lora_arg(arg)
        lora, embeddings = method_files(Path(raw))
        path = lora or embeddings[0]
        specs.append(LoraSpec(path=path, scale=scale, name=_adapter_name(i, path), embeddings=tuple(embeddings), has_lora=lora is not None))
    return specs


def method_files(path: Path) -> tuple[Path | None, list[Path]]:
    """(LoRA file or None, trigger embedding files) that one `--lora` argument names.

    A lorastudio run folder of method ti / pivotal lists its files in `lorastudio.json`; a
    pivotal LoRA file names its embedding in its metadata (loaded when it sits beside it);
    a bare embedding file (`emb_params`, `clip_l` + `clip_g`, one named tensor) is TI only.
    """
    import json

    from lorastudio.models.embeddings import is_embedding_file
    from lorastudio.models.weights_file import WeightsFileError, read_header

    info_file = path / "lorastudio.json"
    if path.is_dir() and info_file.is_file():
        files = json.loads(info_file.read_text(encoding="utf-8")).get("files", {})
        embeddings = [path / files["embedding"]] if files.get("embedding") else []
        lora = resolve_lora_file(path) if files.get("lora") or files.get("diffusers") else None
        if lora is None and not embeddings:
            raise LoadError(f"{path}: this run folder holds neither a LoRA nor an embedding")
        return lora, embeddings
    if path.is_file() and path.suffix.lower() == ".safetensors":
        try:
            header = read_header(path)
        except WeightsFileError as exc:
            raise LoadError(str(exc)) from None
        shapes = {k: _Shape(len(v.shape)) for k, v in header.tensors.items()}
        if is_embedding_file(shapes):
            return None, [path]
        partner = header.metadata.get("lorastudio.embedding")
        bundled = any(k.startswith("bundle_emb.") for k in header.tensors)  # its embeddings come from the file itself
        if partner and not bundled and (path.parent / partner).is_file():
            return resolve_lora_file(path), [path.parent / partner]
    return resolve_lora_file(path), []


@dataclass(frozen=True)
class _Shape:
    ndim: int


def load_embeddings_file(pipe: Any, path: Path, trigger: str | None = None) -> str:
    """Load a trigger embedding into every text encoder of `pipe`; returns its prompt word.

    The token is the file stem (as in A1111), never the key name diffusers would pick
    (`emb_params`, `clip_l`); SDXL's `clip_l` / `clip_g` go to their own encoders.
    """
    from safetensors.torch import load_file

    from lorastudio.models.embeddings import EmbeddingError, load_embedding

    trigger = trigger or path.stem
    try:
        load_embedding(pipe, load_file(str(path)), trigger, source=str(path))
    except (EmbeddingError, ValueError) as exc:
        raise LoadError(str(exc)) from None
    return trigger


def resolve_family(model: str, family: str) -> str:
    """`sd`, `sdxl` or `flux` for `model`; `auto` reads model_index.json / unet config / file header."""
    from lorastudio.models.families import FamilyError, detect_family

    if family not in FAMILIES:
        raise LoadError(f"unknown family '{family}'; use one of {', '.join(FAMILIES)}")
    if family != "auto":
        return family if family in ("sdxl", "flux") else "sd"
    try:
        found = detect_family(model)
    except FamilyError as exc:
        raise LoadError(str(exc)) from None
    if found is None:
        if Path(model).exists():
            raise LoadError(f"{model}: cannot tell the model family (no model_index.json or unet/config.json); pass --family")
        raise LoadError(f"{model}: not a local folder or file; pass --family sd15|sd2|sdxl for a hub id")
    return found


def resolve_device(device: str) -> str:
    """`auto` -> cuda when available, else cpu; an unavailable cuda is an error, not a fallback."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LoadError(f"--device {device}: no CUDA device is available here; use --device cpu")
    return device


def check_model_file(model: str, allow_pickle: bool) -> None:
    """A single-file base model must be a real safetensors file, or a pickle the user allowed."""
    from lorastudio.models.weights_file import WeightsFileError, is_pickle_path, read_header, refuse_pickle

    path = Path(model)
    if not path.is_file():
        return
    try:
        if is_pickle_path(path):
            refuse_pickle(path, allow_pickle, "checkpoint")
        elif path.suffix.lower() == ".safetensors":
            read_header(path)
    except WeightsFileError as exc:
        raise LoadError(str(exc)) from None


def load_pipeline(model: str, *, family: str = "auto", task: str = "text2img", device: str = "cpu",
                  dtype: str = "float32", controlnet: Any = None, allow_pickle: bool = False,
                  progress: bool = True) -> Any:
    """Load the base model as the diffusers pipeline for `task`, progress bars off.

    `model` is a diffusers folder, a hub id or a single-file `.safetensors` checkpoint
    (a `.ckpt` / `.pt` single file only with `allow_pickle`).
    """
    import diffusers

    from lorastudio.models.families import torch_dtype
    from lorastudio.models.weights_file import is_pickle_path

    check_model_file(model, allow_pickle)
    if not progress:  # the component and weight loading bars of diffusers and transformers
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    kind = resolve_family(model, family)
    cls = getattr(diffusers, PIPELINE_CLASSES[task][kind])
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype)}
    if controlnet is not None:
        kwargs["controlnet"] = controlnet
    if kind == "sd":
        # No safety checker ships with our models; the user chose the base model.
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        if model.endswith(".safetensors") or (is_pickle_path(model) and Path(model).is_file()):
            single = {("torch_dtype" if k == "dtype" else k): v for k, v in kwargs.items()}
            pipe = cls.from_single_file(model, **single)
        else:
            pipe = cls.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as exc:
        raise LoadError(f"cannot load base model {model}: {_first_line(exc)}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_controlnet(source: str, dtype: str = "float32") -> Any:
    """A ControlNet from a diffusers folder or hub id (e.g. a canny ControlNet)."""
    from diffusers import ControlNetModel

    from lorastudio.models.families import torch_dtype

    try:
        return ControlNetModel.from_pretrained(source, dtype=torch_dtype(dtype))
    except (OSError, ValueError) as exc:
        raise LoadError(f"cannot load ControlNet {source}: {exc}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _model_description(pipe: Any) -> str:
    unet = pipe.unet
    kind = "SDXL" if getattr(pipe, "text_encoder_2", None) is not None else "SD1.x/2.x"
    return f"{kind} (cross-attention width {unet.config.cross_attention_dim})"


def _loadable_file(pipe: Any, spec: LoraSpec, scratch: Path) -> Path:
    """The file diffusers should load for `spec`, after checking that it fits `pipe`.

    Styles lorastudio parses are checked module by module against the model (a LoRA for
    another base gets one sentence, not a page of size mismatches); kohya, LoCon and older
    diffusers styles are rewritten to the PEFT one in `scratch`. Styles only diffusers reads (DoRA)
    go to it as they are; styles nothing here can apply get one line naming them.
    """
    from lorastudio.models.kohya_keys import UNetLayout
    from lorastudio.models.lora import read_lora, write_diffusers
    from lorastudio.models.lora_formats import UnsupportedLoraError, check_fit

    if getattr(pipe, "transformer", None) is not None:  # Flux: every file layout goes through our reader
        from lorastudio.models.flux_formats import FluxLoraError, loadable_flux_file

        try:
            return loadable_flux_file(pipe, spec.path, scratch / spec.name / DIFFUSERS_WEIGHT_NAME)
        except (FluxLoraError, ValueError) as exc:
            raise LoadError(f"{spec.path}: {exc}") from None
    layout = UNetLayout.from_unet_config(pipe.unet.config) if getattr(pipe, "text_encoder_2", None) else None
    try:
        lora = read_lora(spec.path, layout=layout)
    except UnsupportedLoraError as exc:
        if exc.format.diffusers_loads:
            return spec.path
        raise LoadError(str(exc)) from None
    except ValueError as exc:
        raise LoadError(str(exc)) from None
    components = {name: getattr(pipe, name, None) for name in ("unet", "text_encoder", "text_encoder_2")}
    try:
        check_fit(lora, {k: v for k, v in components.items() if v is not None},
                  f"the base model {getattr(pipe, 'name_or_path', None) or ''}".strip(),
                  _model_description(pipe))
    except ValueError as exc:
        raise LoadError(str(exc)) from None
    if lora.format == "diffusers":
        return spec.path
    # kohya, LoCon and the older diffusers keys go through our own lossless conversion:
    # diffusers' key-style guessing fails on some real files (a kohya text-encoder LoRA
    # without out_proj: "Could not automatically infer state dict type").
    converted = scratch / spec.name / DIFFUSERS_WEIGHT_NAME
    return write_diffusers(converted, lora.modules, {"lorastudio.converted_from": lora.format})


def apply_loras(pipe: Any, specs: list[LoraSpec]) -> None:
    """Load every LoRA as its own adapter and activate them all at their scales."""
    import tempfile

    from lorastudio.known_warnings import loading_adapters

    loaded: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lorastudio-lora-") as scratch:
        for spec in specs:
            for i, embedding in enumerate(spec.embeddings):
                load_embeddings_file(pipe, embedding, spec.triggers[i] if spec.triggers else None)
            if not spec.has_lora:
                continue
            path = _loadable_file(pipe, _without_bundle(pipe, spec, Path(scratch)), Path(scratch))
            try:
                with loading_adapters(loaded):
                    pipe.load_lora_weights(str(path), adapter_name=spec.name)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise LoadError(f"{spec.path}: does not fit this base model ({type(exc).__name__}: "
                                f"{_first_line(exc)})") from None
            loaded.append(spec.name)
    set_scales(pipe, [s for s in specs if s.has_lora])


def _without_bundle(pipe: Any, spec: LoraSpec, scratch: Path) -> LoraSpec:
    """A LoRA with `bundle_emb.*` keys (A1111's bundle): load its embeddings, return the bare LoRA.

    diffusers refuses such a file outright; the embedding is named after its bundle key.
    """
    from dataclasses import replace

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from lorastudio.models.embeddings import BUNDLE_PREFIX, EmbeddingError, load_embedding, split_bundle

    with safe_open(str(spec.path), framework="pt") as fh:
        if not any(k.startswith(BUNDLE_PREFIX) for k in fh.keys()):
            return spec
        metadata = fh.metadata() or {}
    lora, bundles = split_bundle(load_file(str(spec.path)))
    for name, tensors in bundles.items():
        try:
            load_embedding(pipe, tensors, name, source=f"{spec.path} (bundle_emb.{name})")
        except (EmbeddingError, ValueError) as exc:
            raise LoadError(str(exc)) from None
    bare = scratch / f"{spec.name}.bare.safetensors"
    save_file(lora, str(bare), metadata=metadata)
    return replace(spec, path=bare)


def set_scales(pipe: Any, specs: list[LoraSpec]) -> None:
    """Activate exactly these adapters at these scales (others loaded stay inactive)."""
    if specs:
        pipe.set_adapters([s.name for s in specs], adapter_weights=[s.scale for s in specs])
        return
    loaded = sorted({name for names in pipe.get_list_adapters().values() for name in names})
    if loaded:
        # Scale 0 rather than disable_lora(): a later set_adapters does not undo a disable.
        pipe.set_adapters(loaded, adapter_weights=[0.0] * len(loaded))


def describe_loras(specs: list[LoraSpec]) -> list[dict[str, Any]]:
    """JSON-ready list of the LoRAs (file and scale), for PNG metadata and reports."""
    return [{"file": str(s.path), "scale": s.scale, "adapter": s.name} for s in specs]
