"""DreamBooth: class images for prior preservation, and the model exports.

Class images are generated once per recipe and kept content-addressed in the cache
(`<cache>/class_images/<key>.png`, key = sha256 of the base model's identity, prompt, seed,
size, steps, scheduler and guidance), so reruns and other jobs reuse them. Image i is drawn
with seed `class_seed + i`, so the set is the same whatever was generated before. The
user's own regularization images (`data.regularization`) count toward `num_class_images`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorastudio.data.dataset import Item

if TYPE_CHECKING:
    from lorastudio.config.train import TrainConfig

SCHEDULERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "dpm": "DPMSolverMultistepScheduler"}


def model_identity(cfg: TrainConfig) -> str:
    """What identifies the base model without loading it: path, revision, variant and, for a
    local folder or file, the configs and the weight files' names and sizes."""
    parts = [cfg.model.path, str(cfg.model.revision), str(cfg.model.variant), cfg.model.dtype]
    root = Path(cfg.model.path)
    if root.is_file():
        parts.append(f"{root.stat().st_size}")
    elif root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.suffix == ".json":
                parts.append(path.relative_to(root).as_posix() + path.read_text(encoding="utf-8"))
            elif path.suffix in (".safetensors", ".bin"):
                parts.append(f"{path.relative_to(root).as_posix()}:{path.stat().st_size}")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def class_image_key(cfg: TrainConfig, identity: str, index: int) -> str:
    """The content address of class image `index`."""
    db = cfg.dreambooth
    recipe = {"model": identity, "prompt": db.class_prompt, "seed": db.class_seed + index, "size": db.class_size,
              "steps": db.class_steps, "scheduler": db.class_scheduler, "cfg": db.class_cfg}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def class_store(cfg: TrainConfig) -> Path:
    from lorastudio.data.cache import default_cache_dir

    return Path(cfg.train.cache_dir or default_cache_dir()) / "class_images"


def class_items(cfg: TrainConfig, items: list[Item], warn: Any) -> list[Item]:
    """`items` plus generated class images up to `num_class_images` (user reg images count)."""
    db = cfg.dreambooth
    user = len({i.key for i in items if i.is_reg})
    need = max(0, db.num_class_images - user)
    if need == 0:
        warn(f"class images: {user} from data.regularization cover num_class_images={db.num_class_images}")
        return items
    store = class_store(cfg)
    identity = model_identity(cfg)
    keys = [class_image_key(cfg, identity, i) for i in range(need)]
    missing = [i for i, k in enumerate(keys) if not (store / f"{k}.png").is_file()]
    if missing:
        generate_class_images(cfg, store, [(i, keys[i]) for i in missing])
    warn(f"class images: {user} from data.regularization, {need - len(missing)} reused, {len(missing)} generated ({store})")
    made = [Item(f"class_images/{k[:16]}", store / f"{k}.png", db.class_prompt, db.class_size, db.class_size, 1, True) for k in keys]
    return items + made


def generate_class_images(cfg: TrainConfig, store: Path, todo: list[tuple[int, str]]) -> None:
    """Render the missing class images with the base model (seed class_seed + index each)."""
    import os

    import diffusers

    from lorastudio.evaluation.generation import GenerationRequest, generate
    from lorastudio.evaluation.loading import load_pipeline, resolve_device

    db = cfg.dreambooth
    device = resolve_device("auto")
    pipe = load_pipeline(cfg.model.path, family=cfg.model.family, device=device, dtype=cfg.model.dtype, progress=False)
    pipe.scheduler = getattr(diffusers, SCHEDULERS[db.class_scheduler]).from_config(pipe.scheduler.config)
    store.mkdir(parents=True, exist_ok=True)
    for index, key in todo:
        request = GenerationRequest(prompt=db.class_prompt, seed=db.class_seed + index, width=db.class_size, height=db.class_size,
                                    steps=db.class_steps, cfg=db.class_cfg)
        image = generate(pipe, [request], device=device)[0]
        partial = store / f".{key}.{os.getpid()}.png"
        image.save(partial, format="PNG")
        os.replace(partial, store / f"{key}.png")  # a half-written image never looks complete


def export_model(session: Any, out_dir: Path) -> dict[str, str]:
    """The fine-tuned model as a diffusers folder (`model/`) and, when asked, `model.safetensors`."""
    import torch

    from lorastudio.models.families import ModelParts, build_pipeline, torch_dtype
    from lorastudio.models.single_file import write_single_file

    cfg, family = session.cfg, session.family
    dtype = torch_dtype(cfg.dreambooth.export_dtype)
    unet = session.accelerator.unwrap_model(session.unet)
    files = {}
    with session.features.sampling_parts() as parts:
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(parts.noise_scheduler.config)
        encoders = [getattr(e, "module", e) for e in parts.text_encoders]
        pipe = build_pipeline(family, ModelParts(unet=unet, noise_scheduler=parts.noise_scheduler, vae=parts.vae,
                                                 text_encoders=encoders, tokenizers=parts.tokenizers), scheduler)
        with torch.no_grad():
            pipe.to(dtype)
            try:
                pipe.save_pretrained(str(out_dir / "model"), safe_serialization=True)
                files["diffusers_model"] = "model"
                if cfg.dreambooth.single_file:
                    rows = [len(t) for t in parts.tokenizers]
                    write_single_file(out_dir / "model.safetensors", family.name, unet, parts.vae, encoders, rows,
                                      metadata={"lorastudio.method": "dreambooth", "lorastudio.base_model": cfg.model.path})
                    files["single_file"] = "model.safetensors"
            finally:
                pipe.to(torch.float32)
    return files
