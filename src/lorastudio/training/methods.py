"""Training methods: the one place where lora, ti, pivotal and dreambooth differ.

The recipe loop is the same for all four; it asks the method (chosen once by
`get_method(cfg.train.method)`) what to train, how captions read, when the phase changes
and what to export:

- lora: the LoRA adapter (the loop's original behaviour).
- ti: only the trigger's [N, D] vectors per text encoder (spliced into the frozen table).
- pivotal: ti until the pivot step, then the LoRA; at the pivot the vectors leave the
  optimizer (a real freeze: no update, no decay, no rescale) or continue at their own lr.
- dreambooth: the full UNet (optionally the text encoders) with prior preservation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorastudio.models.embeddings import EmbeddingError, expand_trigger
from lorastudio.training.preflight import PreflightError

if TYPE_CHECKING:
    from lorastudio.config.train import TrainConfig
    from lorastudio.data.dataset import Item
    from lorastudio.models.families import ModelParts


class MethodError(PreflightError):
    """A method setting that cannot work with this model or data; the message names the key."""


EMB_PREFIX = "embedding_"  # params names: embedding_0 (text encoder 1), embedding_1 (text encoder 2)


@dataclass
class MethodState:
    """What a method keeps between calls: its parameter lists and the current phase."""

    lora: list[Any] = field(default_factory=list)
    embeddings: list[Any] = field(default_factory=list)
    phase: str = ""


def trains_text(cfg: TrainConfig) -> bool:
    """True when text conditioning needs gradients (no text cache, encoders kept)."""
    return cfg.train.method in ("ti", "pivotal") or (cfg.train.method == "dreambooth" and cfg.dreambooth.train_text_encoder)


def pivot_step(cfg: TrainConfig, total_steps: int) -> int:
    """The first step that trains the LoRA (pivotal); total_steps for ti, 0 otherwise."""
    method, ti = cfg.train.method, cfg.ti
    if method == "ti":
        return total_steps
    if method != "pivotal":
        return 0
    if ti.pivot_step is not None:
        return min(ti.pivot_step, total_steps)
    return max(1, math.floor(total_steps * (ti.pivot_fraction or 0.5)))


# --- preflight (no model weights) ---------------------------------------------------------


def check(cfg: TrainConfig, items: list[Item], warn: Any) -> None:
    """Refuse what would fail later, before any model loads: trigger in the vocabulary,
    trigger absent from every caption."""
    method = cfg.train.method
    if method == "lora":
        return
    if cfg.model.family not in ("sd15", "sd2", "sdxl"):
        raise MethodError(f"train.method={method} supports model.family sd15, sd2 and sdxl, not {cfg.model.family}")
    if method in ("ti", "pivotal"):
        _check_trigger(cfg, items, warn)


def _check_trigger(cfg: TrainConfig, items: list[Item], warn: Any) -> None:
    import re

    from lorastudio.models.embeddings import vocabulary_clash

    trigger = cfg.ti.trigger
    for tokenizer in _tokenizers(cfg):
        clash = vocabulary_clash(tokenizer, trigger, cfg.ti.num_vectors)
        if clash is not None:
            raise MethodError(f"ti.trigger: '{clash}' is already in the tokenizer's vocabulary of {cfg.model.path}; choose a new word")
    word = re.compile(rf"(?<![\w]){re.escape(trigger)}(?![\w])")
    train_items = [i for i in items if not i.is_reg]
    missing = [i for i in train_items if not word.search(i.caption)]
    if len(missing) == len(train_items):
        raise MethodError(f"ti.trigger '{trigger}' appears in no training caption; the vectors would learn nothing")
    if missing:
        warn(f"warning: {len(missing)} of {len(train_items)} captions lack the trigger '{trigger}' (e.g. {missing[0].key})")
    prefixed = sorted({w for i in train_items for w in re.findall(rf"\b{re.escape(trigger)}\w+", i.caption)})
    if prefixed:
        warn(f"warning: caption words start with the trigger ({prefixed[0]}); diffusers' prompt expansion rewrites them too")


def _tokenizers(cfg: TrainConfig) -> list[Any]:
    """The model's tokenizers (light files), to check the trigger before weights load."""
    from transformers import CLIPTokenizer

    from lorastudio.models.families import get_family, is_single_file

    if is_single_file(cfg.model.path):
        return []  # checked again when the tokenizers load with the model
    family = get_family(cfg.model.family)
    kwargs = {"revision": cfg.model.revision} if cfg.model.revision else {}
    return [CLIPTokenizer.from_pretrained(cfg.model.path, subfolder=folder, **kwargs) for folder in family.tokenizer_folders]


def prepare_items(cfg: TrainConfig, items: list[Item], warn: Any) -> list[Item]:
    """The method's checks, then (dreambooth) the class images: the user's plus generated ones."""
    check(cfg, items, warn)
    if cfg.train.method == "dreambooth" and cfg.dreambooth.num_class_images:
        from lorastudio.training.dreambooth import class_items

        return class_items(cfg, items, warn)
    return items


# --- what trains ----------------------------------------------------------------------------


def attach(cfg: TrainConfig, parts: ModelParts, state: MethodState) -> dict[str, Any]:
    """Freeze the base, add what this method trains, return the trainable params by name."""
    import torch

    from lorastudio.training.recipe import attach_adapters

    method = cfg.train.method
    named: dict[str, Any] = {}
    if method in ("lora", "pivotal"):
        named = attach_adapters(cfg, parts)
        state.lora = list(named.values())
    else:
        for module in [parts.unet, parts.vae, *parts.text_encoders]:
            module.requires_grad_(False)
    if method in ("ti", "pivotal"):
        from lorastudio.models.embeddings import add_trigger, init_rows

        gen = torch.Generator().manual_seed(cfg.train.seed)
        for i, (encoder, tokenizer) in enumerate(zip(parts.text_encoders, parts.tokenizers, strict=True)):
            try:
                rows = init_rows(encoder, tokenizer, cfg.ti.init, cfg.ti.num_vectors, gen)
                named[f"{EMB_PREFIX}{i}"] = add_trigger(encoder, tokenizer, cfg.ti.trigger, rows)
            except EmbeddingError as exc:
                raise MethodError(str(exc)) from None
        state.embeddings = [named[f"{EMB_PREFIX}{i}"] for i in range(len(parts.text_encoders))]
    if method == "dreambooth":
        parts.unet.requires_grad_(True)
        named = {f"unet.{n}": p for n, p in parts.unet.named_parameters()}
        if cfg.dreambooth.train_text_encoder:
            for i, te in enumerate(parts.text_encoders):
                te.requires_grad_(True)
                named.update({f"text_encoder_{i}.{n}": p for n, p in te.named_parameters()})
        for p in named.values():
            p.data = p.data.float()
    return named


def param_groups(cfg: TrainConfig, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Optimizer groups: group 0 the LoRA / UNet, then the text encoders or the vectors."""
    from lorastudio.training.recipe import param_groups as lora_groups

    method = cfg.train.method
    if method == "lora":
        return lora_groups(cfg, params)
    if method == "ti":
        return [{"params": list(params.values()), "lr": cfg.ti.lr}]
    if method == "pivotal":
        emb = [p for n, p in params.items() if n.startswith(EMB_PREFIX)]
        return [*lora_groups(cfg, {n: p for n, p in params.items() if not n.startswith(EMB_PREFIX)}), {"params": emb, "lr": cfg.ti.lr}]
    unet = [p for n, p in params.items() if n.startswith("unet.")]
    text = [p for n, p in params.items() if not n.startswith("unet.")]
    groups = [{"params": unet, "lr": cfg.train.lr}]
    if text:
        groups.append({"params": text, "lr": cfg.dreambooth.text_encoder_lr or cfg.train.lr})
    return groups


def ddp_wraps(cfg: TrainConfig, num_processes: int) -> bool:
    """Whether the recipe wraps the UNet in DDP: plain LoRA, or any method in one process.

    With several processes the other methods are not wrapped: TI's vectors live in the text
    encoders, pivotal's LoRA joins the trained set only at the pivot (DDP fixes that set when
    it wraps), and DreamBooth may train the text encoders; `average_gradients` does DDP's
    all-reduce for them instead, once per optimizer step.
    """
    return cfg.train.method == "lora" or num_processes == 1


def average_gradients(cfg: TrainConfig, params: list[Any], num_processes: int) -> None:
    """Average the trainable gradients across processes, so every process takes the same step.

    A parameter that got no gradient on some process (a batch there without the trigger)
    counts as zero there; one that got none anywhere keeps None, as in one process.
    """
    if ddp_wraps(cfg, num_processes):
        return
    import torch
    import torch.distributed as dist

    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        return
    present = torch.tensor([float(p.grad is not None) for p in trainable], device=trainable[0].device)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    grads = []
    for p, anywhere in zip(trainable, present.tolist(), strict=True):
        if anywhere and p.grad is None:
            p.grad = torch.zeros_like(p)
        if anywhere:
            grads.append(p.grad)
    for handle in [dist.all_reduce(g, async_op=True) for g in grads]:
        handle.wait()
    for g in grads:
        g.div_(num_processes)


def captions(cfg: TrainConfig, texts: list[str]) -> list[str]:
    """Captions as the tokenizer must see them: the trigger expanded to its N tokens."""
    if cfg.train.method not in ("ti", "pivotal"):
        return texts
    return [expand_trigger(t, cfg.ti.trigger, cfg.ti.num_vectors) for t in texts]


def enter_phase(cfg: TrainConfig, state: MethodState, optimizer: Any, lr_scheduler: Any, step: int, total_steps: int, log: Any) -> None:
    """Pivotal only: before `step`, put the optimizer in the phase that step belongs to.

    Phase "ti": the LoRA group is empty (its params need no grad). Phase "lora": the LoRA
    group is filled; the vectors' group is emptied and their optimizer state dropped
    (freeze) or kept at ti.continue_lr (continue). Called before a resume loads the
    optimizer state, so a run resumed across the pivot holds exactly what a straight run holds.
    """
    if cfg.train.method != "pivotal":
        return
    phase = "ti" if step < pivot_step(cfg, total_steps) else "lora"
    if phase == state.phase:
        return
    lora_group, emb_group = optimizer.param_groups[0], optimizer.param_groups[-1]
    if phase == "ti":
        lora_group["params"] = []
        for p in state.lora:
            p.requires_grad_(False)
    else:
        lora_group["params"] = list(state.lora)
        for p in state.lora:
            p.requires_grad_(True)
        if cfg.ti.after_pivot == "freeze":
            emb_group["params"] = []
            for p in state.embeddings:
                optimizer.state.pop(p, None)
                p.requires_grad_(False)
                p.grad = None
        else:
            lr_scheduler.base_lrs[-1] = cfg.ti.continue_lr or cfg.ti.lr / 10
        if state.phase:
            log(f"step {step}: pivot, LoRA training starts; trigger vectors {'frozen' if cfg.ti.after_pivot == 'freeze' else 'continue'}")
    state.phase = phase


# --- exports ---------------------------------------------------------------------------------


def card(cfg: TrainConfig, files: dict[str, str]) -> str:
    """The model card: what was trained and the prompt syntax for each UI."""
    method, trigger = cfg.train.method, cfg.ti.trigger
    lines = [f"# {Path(cfg.output_dir).name}", "", f"- method: {method}", f"- base model: {cfg.model.path} ({cfg.model.family})"]
    if trigger and method in ("ti", "pivotal"):
        lines.append(f"- trigger: `{trigger}` ({cfg.ti.num_vectors} vector(s) per text encoder)")
    lines.append("")
    lora = files.get("lora")
    emb = files.get("embedding")
    lines += ["## Prompt syntax", ""]
    if emb:
        lines += [f"- **A1111 / Forge**: put `{emb}` in `embeddings/`" + (f" and `{lora}` in `models/Lora/`" if lora else "")
                  + f"; prompt: `{trigger}, a photo of ...`" + (f" plus `<lora:{Path(lora).stem}:1>` (the tag follows the LoRA's file name)" if lora else ""),
                  f"- **ComfyUI**: put `{emb}` in `models/embeddings/`; prompt: `embedding:{trigger}, a photo of ...` "
                  "(plain text does not activate an embedding)" + ("; load the LoRA with a LoraLoader node" if lora else ""),
                  f"- **diffusers**: `lorastudio generate --model BASE --lora {Path(cfg.output_dir) / 'final'} --prompt '{trigger}, ...'` loads "
                  + ("both" if lora else "it") + "; by hand, "
                  f"`pipe.load_textual_inversion(load_file('{emb}')['emb_params'], token='{trigger}')` (SDXL: `clip_l` into "
                  "text_encoder/tokenizer, `clip_g` into text_encoder_2/tokenizer_2, same token)"
                  + ("; then `pipe.load_lora_weights('diffusers')`" if lora else ""),
                  "", "Both files are needed together: the LoRA was trained with these vectors."]
    elif method == "dreambooth":
        if files.get("single_file"):
            lines.append(f"- A1111 / ComfyUI: `{files['single_file']}` is a full checkpoint (models/Stable-diffusion, models/checkpoints).")
        if files.get("diffusers_model"):
            lines.append(f"- diffusers: `from_pretrained('{files['diffusers_model']}')`; a small LoRA: `lorastudio extract-lora BASE {files['diffusers_model']} --rank 32`.")
    if files.get("bundle"):
        lines += ["", f"`{files['bundle']}` bundles LoRA and embedding (A1111 only; ComfyUI and diffusers do not read bundles)."]
    return "\n".join(lines) + "\n"


def write_info(out_dir: Path, cfg: TrainConfig, files: dict[str, str], step: int) -> None:
    """`lorastudio.json` (what the loader reads) and the README.md card."""
    info = {"method": cfg.train.method, "family": cfg.model.family, "base_model": cfg.model.path, "step": step,
            "trigger": cfg.ti.trigger if cfg.train.method in ("ti", "pivotal") else None,
            "num_vectors": cfg.ti.num_vectors if cfg.train.method in ("ti", "pivotal") else None, "files": files}
    (out_dir / "lorastudio.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    (out_dir / "README.md").write_text(card(cfg, files), encoding="utf-8")


def export(session: Any, out_dir: Path, *, final: bool) -> None:
    """Write this method's outputs into `out_dir` (a checkpoint or final/)."""
    cfg = session.cfg
    method = cfg.train.method
    files: dict[str, str] = {}
    meta = {"lorastudio.step": str(session.pos.step), "lorastudio.base_model": cfg.model.path, "lorastudio.method": method}
    if method == "pivotal":
        files.update(_export_lora(session, out_dir, meta))
    if method in ("ti", "pivotal"):
        files.update(_export_embedding(session, out_dir, meta))
    if method == "pivotal" and cfg.ti.bundle and "lora" in files:
        files["bundle"] = _export_bundle(out_dir, files)
    if method == "dreambooth" and final:
        from lorastudio.training.dreambooth import export_model

        files.update(export_model(session, out_dir))
    write_info(out_dir, cfg, files, session.pos.step)


def _export_lora(session: Any, out_dir: Path, meta: dict[str, str]) -> dict[str, str]:
    from lorastudio.models.lora import export_adapter

    net = session.cfg.network
    written = export_adapter(out_dir, family=session.family.name, unet=session.accelerator.unwrap_model(session.unet), text_encoders=[],
                             rank=net.rank, alpha=net.alpha, formats=session.cfg.save.formats,
                             metadata={**meta, "lorastudio.trigger": session.cfg.ti.trigger, "lorastudio.embedding": f"{session.cfg.ti.trigger}.safetensors"})
    return {k if k != "kohya" else "lora": str(p.relative_to(out_dir)) for k, p in written.items()}


def _export_embedding(session: Any, out_dir: Path, meta: dict[str, str]) -> dict[str, str]:
    from lorastudio.models.embeddings import write_diffusers_embeddings, write_embedding

    trigger = session.cfg.ti.trigger
    vectors = [session.params[f"{EMB_PREFIX}{i}"] for i in range(len(session.parts.tokenizers))]
    path = write_embedding(out_dir / f"{trigger}.safetensors", session.family.name, vectors, {**meta, "lorastudio.trigger": trigger})
    write_diffusers_embeddings(out_dir / "diffusers", trigger, vectors)
    return {"embedding": path.name}


def _export_bundle(out_dir: Path, files: dict[str, str]) -> str:
    """`<name>.bundle.safetensors`: the kohya LoRA plus `bundle_emb.<trigger>.*` (A1111 only)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from lorastudio.models.embeddings import bundle_tensors

    lora_path, emb_path = out_dir / files["lora"], out_dir / files["embedding"]
    with safe_open(str(lora_path), framework="pt") as fh:
        metadata = fh.metadata() or {}
    trigger = emb_path.stem
    bundle = out_dir / f"{lora_path.stem}.bundle.safetensors"
    save_file(bundle_tensors(load_file(str(lora_path)), trigger, load_file(str(emb_path))), str(bundle), metadata=metadata)
    return bundle.name
