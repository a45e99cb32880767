"""Validation during training: a fixed-noise validation loss and a sample-time leak figure.

The training loss is mostly timestep noise: each step draws new noise and timesteps. The
validation loss gives every validation image the same noise and timestep at every
evaluation (drawn, like training's, from a generator seeded by the run seed, but at a step
number training never uses), so its curve moves only when the model does.

The leak figure runs the audit's pixel detectors on the training samples: for each of the
dataset's confounders, how much more often it appears than in the step-0 samples (the base
model, since nothing has trained yet). It uses the sample prompts, which may name the
confounder, so it is an early warning; `lorastudio evaluate` measures the figure that counts
on held-out prompts.

Both write their own metrics.jsonl rows, without a "loss" key:
  {"step", "val_loss", "val_split": "held-out" | "training", "val_images"}
  {"step", "leak": {label: rate difference or null}, "leak_images"}
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorastudio.training.preflight import PreflightError

if TYPE_CHECKING:
    from lorastudio.config.train import TrainConfig
    from lorastudio.data.dataset import Item
    from lorastudio.evaluation.generation import GenerationRequest
    from lorastudio.evaluation.metrics import Confounders
    from lorastudio.training.logging import MetricsLogger
    from lorastudio.training.recipe import Session

# Training draws noise for steps 0, 1, 2, ...; validation draws at this step, so its noise is
# fixed for the run and never equals a training draw.
VALIDATION_STEP = -1
HELD_OUT, TRAINING = "held-out", "training"


@dataclass(frozen=True)
class ValidationSet:
    """The images the validation loss is measured on, and where they come from."""

    items: list[Item]
    split: str  # HELD_OUT (never trained on) or TRAINING (a fixed subset of the training images)


def split(cfg: TrainConfig, items: list[Item]) -> tuple[list[Item], ValidationSet | None]:
    """(training items, validation set or None when the validation loss is off).

    The images are drawn from the datasets' images (never the class images) by
    `train.seed`, so every process and every resume picks the same ones."""
    val = cfg.validation
    candidates = sorted((i for i in items if not i.is_reg), key=lambda i: i.key)
    rng = random.Random(f"{cfg.train.seed}:validation")
    if val.holdout:
        if val.holdout >= len(candidates):
            raise PreflightError(
                f"validation.holdout={val.holdout} would leave no training image (the datasets hold {len(candidates)}); "
                f"hold out at most {len(candidates) - 1}"
            )
        held = {i.key for i in rng.sample(candidates, val.holdout)}
        return [i for i in items if i.key not in held], ValidationSet([i for i in candidates if i.key in held], HELD_OUT)
    if val.every_n_steps is None:
        return items, None
    chosen = {i.key for i in rng.sample(candidates, min(val.images, len(candidates)))}
    return items, ValidationSet([i for i in candidates if i.key in chosen], TRAINING)


def due(session: Session) -> bool:
    """True at step 0 of a fresh run, every `validation.every_n_steps` and at the last step."""
    every, step = session.cfg.validation.every_n_steps, session.pos.step
    if session.val_set is None or every is None:
        return False
    return step % every == 0 or step == session.total_steps


def validation_loss(session: Session, images: ValidationSet) -> float:
    """Mean diffusion loss over the validation images, no grad, adapter active.

    Each image is its own batch (images may come from different buckets) with the noise and
    timestep of (seed, VALIDATION_STEP, its index). The global RNG is forked so nothing here
    can shift what training draws; the modules go back to the mode they were in."""
    import torch

    from lorastudio.data.dataset import Example
    from lorastudio.training.recipe import batch_loss

    acc = session.accelerator
    unet = acc.unwrap_model(session.unet)
    encoders = [acc.unwrap_model(te) for te in session.text_encoders]
    modules = [unet, *encoders]
    modes = [m.training for m in modules]
    devices = [torch.cuda.current_device()] if acc.device.type == "cuda" else []
    losses = []
    try:
        for module in modules:
            module.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            for index, item in enumerate(images.items):
                loss = batch_loss(session, [Example(item, item.caption, False)], [index], step=VALIDATION_STEP,
                                  weights=torch.ones(1), unet=unet, text_encoders=encoders)
                losses.append(float(loss))
    finally:
        for module, mode in zip(modules, modes, strict=True):
            module.train(mode)
    return sum(losses) / len(losses)


def maybe_validate(session: Session, logger: MetricsLogger) -> None:
    """Log a validation row when due. The main process measures; the others wait for it."""
    if not due(session):
        return
    images = session.val_set
    if session.is_main and images is not None:
        value = validation_loss(session, images)
        logger.log({"step": session.pos.step, "val_loss": value if math.isfinite(value) else None,
                    "val_split": images.split, "val_images": len(images.items)})
    session.accelerator.wait_for_everyone()


def wants_base_samples(cfg: TrainConfig) -> bool:
    """Render step-0 samples for the leak's base rates: leak on, prompts given, samples during the run.

    A decision from the config alone, so every process agrees on it."""
    return cfg.validation.leak and bool(cfg.sample.prompts) and cfg.sample.every_n_steps is not None


def _read_png(path: Path) -> Any:
    """One of our own sample PNGs, decoded with the byte and pixel limits."""
    from lorastudio.data.images import DecodeLimits, decode_image

    return decode_image(path.read_bytes(), DecodeLimits()).image


class LeakWatch:
    """The dataset's confounders, their rates in the step-0 samples, and the leak of later samples."""

    def __init__(self, confounders: Confounders) -> None:
        self.confounders = confounders
        self.base: dict[str, float] | None = None

    @classmethod
    def for_run(cls, cfg: TrainConfig, run_dir: Path, step: int, log: Callable[[str], None]) -> LeakWatch | None:
        """The watch for this run, or None (with a note why) when there is nothing to measure.

        A resumed run (`step` > 0) reads its base rates back from samples/step_0/."""
        from lorastudio.evaluation import metrics
        from lorastudio.training.sampling import sample_requests

        if not wants_base_samples(cfg):
            return None
        images, roots = metrics.training_images({"data": cfg.data.model_dump(mode="json")})
        watch = cls(metrics.find_confounders(images, roots))
        if not watch.confounders.labels():
            log("leak: no attribute is in most training images or flagged by the audit; no leak rows")
            return None
        if step > 0 and not watch.read_base(run_dir, sample_requests(cfg)):
            log("leak: samples/step_0/ is missing or was rendered from other sample prompts; no leak rows this run")
            return None
        return watch

    def read_base(self, run_dir: Path, requests: list[GenerationRequest]) -> bool:
        """Base rates from samples/step_0/NN.png when they were rendered from these requests."""
        folder = run_dir / "samples" / "step_0"
        paths = [folder / f"{i:02d}.png" for i in range(len(requests))]
        if not all(p.is_file() and _same_request(p, req) for p, req in zip(paths, requests, strict=True)):
            return False
        self.set_base(paths)
        return True

    def set_base(self, paths: list[Path]) -> None:
        """Base rates from the step-0 (base model) samples."""
        from lorastudio.evaluation import metrics

        self.base = metrics.base_rates([_read_png(p) for p in paths], self.confounders)

    def observe(self, step: int, paths: list[Path]) -> dict[str, Any] | None:
        """Step 0 sets the base rates (no row); later steps return the leak row."""
        from lorastudio.evaluation import metrics

        if step == 0 and self.base is None:
            self.set_base(paths)
            return None
        if self.base is None or not paths:
            return None
        leaks = metrics.leak([_read_png(p) for p in paths], self.base, self.confounders)
        return {"step": step, "leak": {k: (v if math.isfinite(v) else None) for k, v in leaks.items()}, "leak_images": len(paths)}


def _same_request(path: Path, req: GenerationRequest) -> bool:
    """True when the PNG's `lorastudio` text chunk records this prompt, seed, size, steps and cfg."""
    from dataclasses import asdict

    from PIL import Image

    try:
        with Image.open(path) as im:
            saved = json.loads(im.text.get("lorastudio", "{}"))  # type: ignore[attr-defined]
    except (OSError, ValueError):
        return False
    return all(saved.get(k) == v for k, v in asdict(req).items())
